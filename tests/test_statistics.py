"""IQM and its stratified bootstrap interval (rliable's computation, in numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from sb3_carla_td3.validation.statistics import interquartile_mean, stratified_bootstrap_iqm


def test_iqm_is_the_mean_of_the_middle_half():
    assert interquartile_mean(np.arange(1, 9)) == pytest.approx(4.5)  # 3, 4, 5, 6
    assert interquartile_mean([[1000.0, 1.0], [2.0, 3.0]]) == pytest.approx(2.5)  # the outlier is cut
    assert interquartile_mean([5.0, 7.0, 100.0]) == pytest.approx(112.0 / 3)  # under 4 scores: nothing cut (scipy)


def test_iqm_matches_a_trimmed_mean_by_hand():
    scores = np.random.default_rng(3).normal(size=(3, 10))
    flat = np.sort(scores.ravel())
    assert interquartile_mean(scores) == pytest.approx(flat[7:23].mean())


def test_identical_runs_give_a_zero_width_interval():
    estimate = stratified_bootstrap_iqm(np.tile(np.arange(10.0), (3, 1)), reps=200)
    assert estimate.low == pytest.approx(estimate.value) and estimate.high == pytest.approx(estimate.value)


def test_the_interval_holds_the_estimate_and_narrows_with_more_runs():
    rng = np.random.default_rng(0)
    few = stratified_bootstrap_iqm(rng.normal(500.0, 100.0, size=(3, 10)) + rng.normal(0, 150, size=(3, 1)))
    many = stratified_bootstrap_iqm(rng.normal(500.0, 100.0, size=(30, 10)) + rng.normal(0, 150, size=(30, 1)))
    assert few.low <= few.value <= few.high and many.low <= many.value <= many.high
    assert many.high - many.low < few.high - few.low
    assert few.runs == 3 and str(few).startswith(f"{few.value:.1f} [")


def test_the_bootstrap_resamples_runs_within_each_column():
    # Run 0 scores 0 and run 1 scores 100 in every column. Resampling whole rows, a quarter of the draws take run 0
    # twice (IQM 0) and a quarter run 1 twice (IQM 100): the interval would be [0, 100]. Per column, the draws mix
    # the two runs within each draw, and the interval lies strictly inside.
    scores = np.array([[0.0] * 40, [100.0] * 40])
    estimate = stratified_bootstrap_iqm(scores, reps=500, seed=1)
    assert estimate.value == pytest.approx(50.0)
    assert 0.0 < estimate.low < 50.0 < estimate.high < 100.0


def test_the_same_seed_gives_the_same_interval_and_bad_input_is_named():
    scores = np.random.default_rng(1).normal(size=(3, 5))
    assert stratified_bootstrap_iqm(scores, seed=4) == stratified_bootstrap_iqm(scores, seed=4)
    with pytest.raises(ValueError, match="runs x episodes"):
        stratified_bootstrap_iqm(np.zeros(5))
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_iqm(np.zeros((2, 2)), confidence=95)
    with pytest.raises(ValueError, match="no scores"):
        interquartile_mean([])

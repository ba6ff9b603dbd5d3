"""IQM and its stratified bootstrap interval (rliable's computation, in numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from sb3_carla_td3.validation.statistics import (
    bootstrap_mean,
    evaluation_swings,
    interquartile_mean,
    paired_mean_difference,
    stratified_bootstrap_iqm,
)


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
    assert few.n == 3 and str(few).startswith(f"{few.value:.1f} [")


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


def test_a_shift_on_every_track_is_beyond_noise_and_a_reshuffle_is_not():
    rng = np.random.default_rng(2)
    before = rng.normal(500.0, 200.0, size=10)
    shifted = paired_mean_difference(before, before - 300.0)
    assert shifted.value == pytest.approx(-300.0) and shifted.low == pytest.approx(-300.0) and shifted.n == 10
    # The same returns on other tracks (a permutation): the mean is unchanged, the pairs differ by hundreds.
    reshuffled = paired_mean_difference(before, rng.permutation(before))
    assert reshuffled.value == pytest.approx(0.0, abs=1e-9) and reshuffled.low < -50.0 < 50.0 < reshuffled.high


def test_paired_differences_name_bad_input():
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(2,\)"):
        paired_mean_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_mean_difference([1.0], [2.0], confidence=1.5)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean([])


def test_the_bootstrap_mean_interval_narrows_with_more_episodes():
    rng = np.random.default_rng(5)
    few, many = bootstrap_mean(rng.normal(600.0, 200.0, 10)), bootstrap_mean(rng.normal(600.0, 200.0, 50))
    assert few.low < few.value < few.high and many.low < many.value < many.high
    # The half-width shrinks as 1 / sqrt(episodes): about 1.96 * 200 / sqrt(n)
    assert 0.6 * 124.0 < (few.high - few.low) / 2 < 1.2 * 124.0 and (many.high - many.low) < 0.7 * (few.high - few.low)


def test_evaluation_swings_pair_consecutive_evaluations_of_the_same_key():
    def evaluation(frames: int, returns: list[float], polyak: list[float] | None = None) -> dict:
        record = {"physics_frames": frames, "returns": returns}
        return record | ({"polyak_returns": polyak} if polyak is not None else {})

    evaluations = [
        evaluation(1000, [100.0, 120.0, 110.0, 90.0]),
        evaluation(2000, [700.0, 720.0, 710.0, 690.0], polyak=[600.0] * 4),
        evaluation(3000, [720.0, 690.0, 700.0, 710.0], polyak=[100.0] * 4),
        evaluation(4000, [700.0, 700.0]),  # fewer tracks: not paired with the one before
    ]
    swings = evaluation_swings(evaluations)
    assert [(s.frames_before, s.frames_after) for s in swings] == [(1000, 2000), (2000, 3000)]
    assert swings[0].beyond_noise and swings[0].change.value == pytest.approx(600.0)
    assert not swings[1].beyond_noise  # the same mean on shuffled tracks
    (polyak,) = evaluation_swings(evaluations, "polyak_returns")
    assert polyak.frames_after == 3000 and polyak.beyond_noise and polyak.change.value == pytest.approx(-500.0)

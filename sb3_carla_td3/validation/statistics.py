"""Aggregate statistics of evaluation returns over seeds, as the field reports them.

rliable (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice",
https://github.com/google-research/rliable) reports the interquartile mean (IQM: the mean of the middle 50 % of all
scores, robust to one outlier seed, less noisy than the median) with 95 % stratified bootstrap confidence intervals.
This module is that computation in numpy (rliable itself pulls in scipy, arch and seaborn). Its score matrix here is
``runs × evaluation episodes``: each column, one evaluation episode slot, is a stratum, and a bootstrap draw
resamples the runs with replacement independently in each column, exactly what
``rliable.library.get_interval_estimates`` does with the columns as tasks.

It also tells churn from evaluation noise. Every evaluation drives the same seeded tracks, so two evaluations of a
run pair up track by track; :func:`evaluation_swings` puts a paired bootstrap interval on each change of the mean
return between consecutive evaluations. A swing whose interval excludes 0 is churn (the policy got better or worse
over the track distribution); one whose interval holds 0 is what a different set of tracks could have shown anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np


def interquartile_mean(scores: np.ndarray) -> float:
    """The mean of the middle 50 % of every score (``scipy.stats.trim_mean(scores, 0.25, axis=None)``).

    :param scores: any shape; all entries count
    :return: the trimmed mean; with fewer than 4 scores nothing is trimmed (the plain mean), as in scipy
    """
    flat = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if flat.size == 0:
        raise ValueError("interquartile_mean: no scores")
    cut = int(0.25 * flat.size)  # scipy's rounding: whole scores only, the same number from each end
    return float(flat[cut : flat.size - cut].mean())


@dataclass(frozen=True)
class IntervalEstimate:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float
    #: how many rows the estimate came from: runs for an IQM, episodes for a mean, track pairs for a difference
    n: int

    def __str__(self) -> str:
        return f"{self.value:.1f} [{self.low:.1f}, {self.high:.1f}]"


def _percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """:return: the central ``confidence`` interval of bootstrap ``draws`` (percentile method)"""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(draws, [tail, 100.0 - tail])
    return float(low), float(high)


def stratified_bootstrap_iqm(
    scores: np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> IntervalEstimate:
    """IQM of a ``runs × episodes`` score matrix with its percentile stratified-bootstrap confidence interval.

    :param scores: one row per run (seed), one column per evaluation episode; rows of equal length
    :param reps: bootstrap draws
    :param confidence: the interval's coverage
    :param seed: of the resampling (the same scores give the same interval)
    :return: the IQM and its interval
    """
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"stratified_bootstrap_iqm: expected a non-empty runs x episodes matrix, got shape {matrix.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"stratified_bootstrap_iqm: confidence={confidence} must be in (0, 1)")
    runs, columns = matrix.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, runs, size=(reps, runs, columns))  # per column (stratum), runs drawn with replacement
    draws = matrix[rows, np.arange(columns)]  # (reps, runs, columns)
    cut = int(0.25 * runs * columns)
    ordered = np.sort(draws.reshape(reps, -1), axis=1)
    iqms = ordered[:, cut : runs * columns - cut].mean(axis=1)
    low, high = _percentile_interval(iqms, confidence)
    return IntervalEstimate(value=interquartile_mean(matrix), low=low, high=high, n=runs)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> IntervalEstimate:
    """The mean of ``values`` with its percentile bootstrap interval (values resampled with replacement).

    With 10 values the percentile interval covers a little less than ``confidence`` (a t interval would be about 20 %
    wider): a value just outside it is weak evidence, one far outside it is not noise.

    :param values: one number per episode (or per paired difference)
    :param reps: bootstrap draws
    :param confidence: the interval's coverage
    :param seed: of the resampling (the same values give the same interval)
    :return: the mean and its interval
    """
    sample = np.asarray(values, dtype=np.float64)
    if sample.ndim != 1 or sample.size == 0:
        raise ValueError(f"bootstrap_mean: expected a non-empty list of numbers, got shape {sample.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_mean: confidence={confidence} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    draws = sample[rng.integers(0, sample.size, size=(reps, sample.size))].mean(axis=1)
    low, high = _percentile_interval(draws, confidence)
    return IntervalEstimate(value=float(sample.mean()), low=low, high=high, n=sample.size)


def paired_mean_difference(
    before: Sequence[float], after: Sequence[float], reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> IntervalEstimate:
    """Mean of ``after - before`` over paired episodes (the same tracks) with its bootstrap interval
    (:func:`bootstrap_mean` of the differences: tracks resampled, pairs kept together).

    :param before: one return per track, first evaluation
    :param after: the same tracks' returns, later evaluation, in the same order
    :param reps: bootstrap draws
    :param confidence: the interval's coverage
    :param seed: of the resampling
    :return: the mean difference and its interval
    """
    first, second = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if first.ndim != 1 or first.shape != second.shape or first.size == 0:
        raise ValueError(
            f"paired_mean_difference: expected two equal-length lists of returns (one per track), "
            f"got shapes {first.shape} and {second.shape}"
        )
    return bootstrap_mean(second - first, reps, confidence, seed)


@dataclass(frozen=True)
class Swing:
    """The change of a run's mean evaluation return from one evaluation to the next, on the same tracks."""

    frames_before: int
    frames_after: int
    change: IntervalEstimate

    @property
    def beyond_noise(self) -> bool:
        """Whether the interval excludes 0: the policy changed over the track distribution (churn), not the draw."""
        return self.change.low > 0.0 or self.change.high < 0.0


def evaluation_swings(evaluations: Sequence[dict[str, Any]], key: str = "returns", seed: int = 0) -> list[Swing]:
    """The swing between each pair of consecutive evaluations that both hold ``key``.

    :param evaluations: a run's evaluations, oldest first (:func:`~sb3_carla_td3.validation.evaluation.read_evaluations`)
    :param key: ``returns`` (the actor) or ``polyak_returns`` (the Polyak-averaged actor on the same tracks)
    :param seed: of the bootstrap
    :return: one :class:`Swing` per consecutive pair; pairs of different track counts are skipped (not paired)
    """
    scored = [e for e in evaluations if key in e]
    return [
        Swing(a["physics_frames"], b["physics_frames"], paired_mean_difference(a[key], b[key], seed=seed))
        for a, b in pairwise(scored)
        if len(a[key]) == len(b[key])
    ]

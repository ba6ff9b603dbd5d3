"""Aggregate statistics of evaluation returns over seeds, as the field reports them.

rliable (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice",
https://github.com/google-research/rliable) reports the interquartile mean (IQM: the mean of the middle 50 % of all
scores, robust to one outlier seed, less noisy than the median) with 95 % stratified bootstrap confidence intervals.
This module is that computation in numpy (rliable itself pulls in scipy, arch and seaborn). Its score matrix here is
``runs × evaluation episodes``: each column, one evaluation episode slot, is a stratum, and a bootstrap draw
resamples the runs with replacement independently in each column, exactly what
``rliable.library.get_interval_estimates`` does with the columns as tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    runs: int

    def __str__(self) -> str:
        return f"{self.value:.1f} [{self.low:.1f}, {self.high:.1f}]"


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
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(iqms, [tail, 100.0 - tail])
    return IntervalEstimate(value=interquartile_mean(matrix), low=float(low), high=float(high), runs=runs)

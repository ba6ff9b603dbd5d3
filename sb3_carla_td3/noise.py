"""Exploration noise with a schedule: Gaussian action noise whose std decays linearly (DrQ-v2's ``stddev_schedule``)."""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.noise import ActionNoise

__all__ = ["LinearDecayNormalNoise"]


class LinearDecayNormalNoise(ActionNoise):
    """Gaussian action noise whose std goes linearly from ``sigma`` to ``final_sigma`` over ``decay_steps`` draws.

    SB3 draws the noise once per env step after ``learning_starts`` (once per env per step in a vec env wrapped by
    ``VectorizedActionNoise``), so with one env ``decay_steps`` counts env steps of the policy's own exploration.

    :param mean: mean of the noise, one entry per action dimension
    :param sigma: std at the first draw, one entry per action dimension
    :param final_sigma: std from ``decay_steps`` draws on
    :param decay_steps: draws over which the std decays, >= 1
    :param dtype: dtype of the noise
    """

    def __init__(
        self,
        mean: np.ndarray,
        sigma: np.ndarray,
        final_sigma: np.ndarray,
        decay_steps: int,
        dtype: type = np.float32,
    ) -> None:
        self._mu = np.asarray(mean, dtype=np.float64)
        self._sigma = np.asarray(sigma, dtype=np.float64)
        self._final_sigma = np.asarray(final_sigma, dtype=np.float64)
        if self._mu.shape != self._sigma.shape or self._sigma.shape != self._final_sigma.shape:
            shapes = (self._mu.shape, self._sigma.shape, self._final_sigma.shape)
            raise ValueError(f"mean, sigma and final_sigma must have one shape, got {shapes}")
        if np.any(self._sigma < 0) or np.any(self._final_sigma < 0):
            raise ValueError(f"sigma and final_sigma must be >= 0, got {self._sigma} and {self._final_sigma}")
        if isinstance(decay_steps, bool) or not isinstance(decay_steps, (int, np.integer)) or decay_steps < 1:
            raise ValueError(f"decay_steps must be an integer >= 1, got {decay_steps!r}")
        self._decay_steps = int(decay_steps)
        self._dtype = dtype
        self.draws = 0
        super().__init__()

    @property
    def current_sigma(self) -> np.ndarray:
        """:return: the std of the next draw"""
        fraction = min(self.draws / self._decay_steps, 1.0)
        return self._sigma + fraction * (self._final_sigma - self._sigma)

    def __call__(self) -> np.ndarray:
        sigma = self.current_sigma
        self.draws += 1
        return np.random.normal(self._mu, sigma).astype(self._dtype)

    def reset(self) -> None:
        """Called at every episode end by SB3: the schedule runs over the whole run, so nothing is reset."""

    def __repr__(self) -> str:
        return (
            f"LinearDecayNormalNoise(mu={self._mu}, sigma={self._sigma} -> {self._final_sigma} "
            f"over {self._decay_steps} draws, now {self.current_sigma})"
        )

"""Episode length: a collapse of the rolling mean length against a baseline."""

from __future__ import annotations

import os
from collections import deque

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sb3_carla_td3.callbacks.utils import episode_infos, is_count, is_number, require
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, keep_training, warn_health


class EpisodeCollapseCallback(BaseCallback):
    """Detect episode lengths collapsing (e.g. 50 steps to 2) against a baseline, from Monitor's ``info["episode"]``.

    Only episodes that end after ``model.learning_starts`` count. The baseline is ``baseline_length`` or the mean
    length of the first ``baseline_episodes`` of them. Once ``window`` episodes were seen, each finished episode is a
    check: the rolling mean of the last ``window`` lengths (``health/ep_len_rolling``) against ``fraction *
    baseline`` (``health/ep_len_baseline`` logs the baseline). A collapse is declared when it stays below for
    ``patience`` consecutive checks (``health/episode_collapse`` = 1, ``collapsed_at_step``, a warning): after an
    abrupt drop to near zero, at most ``window + patience - 1`` episodes after the first short one.

    :param fraction: share of the baseline below which the rolling mean counts as collapsed, in (0, 1)
    :param window: episodes in the rolling mean, >= 1
    :param baseline_episodes: episodes averaged for the baseline when ``baseline_length`` is None, >= 1
    :param baseline_length: baseline episode length in env steps, > 0; None: measured
    :param patience: consecutive checks below the threshold that declare a collapse, >= 1
    :param stop_on_collapse: stop training (``_on_step`` returns False) at a collapse
    :param checkpoint_path: where to save the model before such a stop; None saves nothing
    :param verbose: verbosity level; reports go through the logger and warnings
    """

    def __init__(
        self,
        fraction: float = 0.3,
        window: int = 10,
        baseline_episodes: int = 10,
        baseline_length: float | None = None,
        patience: int = 5,
        stop_on_collapse: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        require(is_number(fraction, 0) and fraction < 1, "fraction", fraction, "a float in (0, 1)")
        for name, count in (("window", window), ("baseline_episodes", baseline_episodes), ("patience", patience)):
            require(is_count(count), name, count, "an int >= 1")
        require(is_number(baseline_length, 0, allow_none=True), "baseline_length", baseline_length, "a float > 0 or None")
        self.fraction, self.window, self.patience = float(fraction), window, patience
        self.baseline_episodes = baseline_episodes
        self.baseline: float | None = None if baseline_length is None else float(baseline_length)
        self.stop_on_collapse, self.checkpoint_path = stop_on_collapse, checkpoint_path
        self.rolling: float | None = None
        self.below_count = 0
        self.collapsed_at_step: int | None = None
        self.rolling_at_collapse: float | None = None
        self._lengths: deque[float] = deque(maxlen=window)
        self._baseline_lengths: list[float] = []

    def _check(self, length: float) -> bool:
        """Add one finished episode; return True while the rolling mean is collapsed."""
        self._lengths.append(length)
        if self.baseline is None:
            self._baseline_lengths.append(length)
            if len(self._baseline_lengths) == self.baseline_episodes:
                self.baseline = float(np.mean(self._baseline_lengths))
        if self.baseline is None or len(self._lengths) < self.window:
            return False
        self.rolling = float(np.mean(self._lengths))
        self.below_count = self.below_count + 1 if self.rolling < self.fraction * self.baseline else 0
        collapsed = self.below_count >= self.patience
        self.logger.record("health/ep_len_rolling", self.rolling)
        self.logger.record("health/ep_len_baseline", self.baseline)
        self.logger.record("health/episode_collapse", float(collapsed))
        if collapsed and self.collapsed_at_step is None:
            self.collapsed_at_step, self.rolling_at_collapse = self.num_timesteps, self.rolling
            warn_health(
                f"episode length collapsed at timestep {self.num_timesteps}: rolling mean {self.rolling:.4g} over "
                f"{self.window} episodes below {self.fraction:g} x baseline {self.baseline:.4g} for {self.patience} checks"
            )
        return collapsed

    def _on_step(self) -> bool:
        episodes = episode_infos(self)
        if not episodes or self.num_timesteps <= getattr(self.model, "learning_starts", 0):
            return True
        collapsed = [self._check(float(episode["l"])) for episode in episodes]
        continue_training = keep_training(self.model, any(collapsed) and self.stop_on_collapse, self.checkpoint_path)
        return continue_training

    def verdict(self) -> HealthVerdict:
        """Whether the rolling episode length stayed above ``fraction * baseline``.

        :return: value = rolling mean length (at the collapse, else the latest), threshold = ``fraction * baseline``
        """
        threshold = None if self.baseline is None else self.fraction * self.baseline
        if self.rolling is None or threshold is None:
            return HealthVerdict(None, None, threshold, f"fewer than {self.window} episodes after learning started")
        if self.collapsed_at_step is not None:
            detail = f"collapsed at timestep {self.collapsed_at_step} (baseline {self.baseline:.4g} steps)"
            return HealthVerdict(False, self.rolling_at_collapse, threshold, detail)
        return HealthVerdict(True, self.rolling, threshold, f"rolling mean length vs baseline {self.baseline:.4g} steps")

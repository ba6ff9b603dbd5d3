"""Returns: the least-squares trend of episode returns, and whether they degrade."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from sb3_carla_td3.callbacks.utils import episode_infos, is_count, is_number, require
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, warn_health


def reward_trend(returns: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope of episode returns and the standardized change between the window's first and last third.

    :param returns: episode returns in episode order, at least 3
    :return: ``(slope, change)``: slope in return units per episode; change = (mean of the last third - mean of the
        first third) / population std of the window (0 when every return is equal)
    """
    values = np.asarray(returns, dtype=np.float64)
    episodes = np.arange(len(values), dtype=np.float64)
    slope = float(np.polyfit(episodes, values, 1)[0])
    third, spread = len(values) // 3, float(values.std())
    change = float(values[-third:].mean() - values[:third].mean()) / spread if spread > 0 else 0.0
    return slope, change


class RewardTrendCallback(BaseCallback):
    """Least-squares slope of episode returns over the last ``window`` episodes, and a "degrading" flag.

    Degrading: the slope is negative and the mean return of the window's last third is below that of its first third
    by more than ``tolerance`` times the window's return std. With i.i.d. returns and ``tolerance=1`` a window is
    flagged by chance about 1% of the time for 30 episodes, 4% for 20, 14% for 9. Episodes that end during the random
    warm-up (``learning_starts``) are not counted: they are not the policy's. Logs ``health/reward_slope``
    (return per episode), ``health/reward_change`` (that standardized difference) and ``health/reward_degrading``;
    never stops training.

    :param window: episodes in the trend window, >= 3
    :param tolerance: drop, in units of the window's return std, that counts as degrading, >= 0
    :param verbose: verbosity level; reports go through the logger and warnings
    """

    def __init__(self, window: int = 30, tolerance: float = 1.0, verbose: int = 0) -> None:
        super().__init__(verbose=verbose)
        require(is_count(window) and window >= 3, "window", window, "an int >= 3 (episodes)")
        require(is_number(tolerance) and tolerance >= 0, "tolerance", tolerance, "a finite float >= 0")
        self.window, self.tolerance = window, float(tolerance)
        self.slope: float | None = None
        self.change: float | None = None
        self.degrading: bool | None = None
        self._returns: deque[float] = deque(maxlen=window)

    def _on_step(self) -> bool:
        episodes = episode_infos(self)
        if not episodes or self.num_timesteps <= getattr(self.model, "learning_starts", 0):
            return True
        self._returns.extend(float(episode["r"]) for episode in episodes)
        if len(self._returns) < self.window:
            return True
        self.slope, self.change = reward_trend(self._returns)
        degrading = self.slope < 0 and self.change < -self.tolerance
        if degrading and not self.degrading:
            warn_health(
                f"returns degrading at timestep {self.num_timesteps}: slope {self.slope:.4g} per episode; the last third "
                f"of the last {self.window} episodes is {-self.change:.3g} std below the first third"
            )
        self.degrading = degrading
        self.logger.record("health/reward_slope", self.slope)
        self.logger.record("health/reward_change", self.change)
        self.logger.record("health/reward_degrading", float(degrading))
        continue_training = True
        return continue_training

    def verdict(self) -> HealthVerdict:
        """Whether returns were not degrading over the latest window.

        :return: value = standardized change of the latest window, threshold = ``-tolerance``
        """
        if self.change is None or self.slope is None:
            return HealthVerdict(None, None, -self.tolerance, f"fewer than {self.window} episodes")
        detail = f"slope {self.slope:.4g} return/episode over the last {self.window} episodes"
        return HealthVerdict(not self.degrading, self.change, -self.tolerance, detail)

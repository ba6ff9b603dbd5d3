"""Q-values: the critic's outputs against what the observed rewards allow, and their growth."""

from __future__ import annotations

import math
import os
from collections import deque
from operator import attrgetter
from typing import cast

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from sb3_carla_td3.callbacks.measurement import StatsFeed
from sb3_carla_td3.callbacks.utils import is_count, is_number, require
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, keep_training, warn_health
from sb3_carla_td3.q_scoring import QSample, divergence_reason, stats_q_sample


class QValueCallback(BaseCallback):
    """Log Q-values after training updates and flag (optionally stop on) divergence.

    The Q statistics of a :class:`~sb3_carla_td3.train_stats.TrainStats`: TD3CNN's after every ``train()`` call (the
    latest update's), or, for another algorithm, a score of the critic (and, for TD3/DDPG/SAC, its one-step target)
    on ``n_samples`` replay transitions every ``check_freq`` env steps. The tested quantity is the largest |Q|
    (``health/q_abs_max``), over the replay actions and the actor's own, Q1(s, pi(s)) (``health/policy_q_mean``).
    With ``B = max|r| / (1 - gamma)``, max|r| the largest |reward| observed so far (``self.locals["rewards"]``),
    there are two tests:

    - bound: |Q| > ``margin * B + atol`` (logged as ``health/q_bound``); no return can be larger than B;
    - growth: |Q| more than ``growth_factor`` times its value at the latest check at least ``growth_window_steps``
      env steps earlier, while above
      ``growth_floor * B + atol`` (``health/q_growth`` logs the ratio): fast growth past what returns allow, caught
      before the margin is used up.

    Non-finite Q-values always count. A violation logs ``health/q_divergence`` = 1, warns with the numbers and
    records ``diverged_at_step`` / ``diverged_at_update`` (first time). With gamma = 1 neither test applies.

    :param check_freq: env steps between replay-scoring checks (all envs together; algorithms without their own
        statistics), >= 1
    :param n_samples: replay transitions scored per check (plain SB3), >= 1
    :param margin: multiple of B tolerated by the bound test, > 0
    :param atol: absolute slack added to the bound and the floor (return units), >= 0; keeps an untrained critic's
        near-zero outputs quiet while rewards are zero or tiny
    :param growth_factor: growth over ``growth_window_steps`` env steps counted as divergence, > 1; None disables the test
    :param growth_window_steps: env steps, at least, between the two values the growth test compares, >= 1 (5: five
        TD3CNN updates at ``train_freq`` 1; a replay-scored algorithm compares with the check one ``check_freq`` back)
    :param growth_floor: the growth test applies only above ``growth_floor * B + atol``, >= 0
    :param stop_on_divergence: stop training (``_on_step`` returns False) at the first divergence
    :param checkpoint_path: where to save the model before such a stop; None saves nothing
    :param verbose: verbosity level; reports go through the logger and warnings
    """

    def __init__(
        self,
        check_freq: int = 50,
        n_samples: int = 256,
        margin: float = 1.5,
        atol: float = 1.0,
        growth_factor: float | None = 10.0,
        growth_window_steps: int = 5,
        growth_floor: float = 1.0,
        stop_on_divergence: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        counts = (("check_freq", check_freq), ("n_samples", n_samples), ("growth_window_steps", growth_window_steps))
        for name, count in counts:
            require(is_count(count), name, count, "an int >= 1")
        require(is_number(margin, 0), "margin", margin, "a positive finite float")
        for name, value in (("atol", atol), ("growth_floor", growth_floor)):
            require(is_number(value) and value >= 0, name, value, "a finite float >= 0")
        require(is_number(growth_factor, 1, allow_none=True), "growth_factor", growth_factor, "a float > 1 or None")
        self.check_freq, self.n_samples, self.margin, self.atol = check_freq, n_samples, float(margin), float(atol)
        self.growth_factor, self.growth_window_steps = growth_factor, growth_window_steps
        self.growth_floor = float(growth_floor)
        self.stop_on_divergence, self.checkpoint_path = stop_on_divergence, checkpoint_path
        self.max_abs_reward = 0.0
        self.last_sample: QSample | None = None
        #: (max |Q|, bound) of the check with the largest |Q| / bound.
        self.worst: tuple[float, float | None] | None = None
        self.diverged_at_step: int | None = None
        self.diverged_at_update: int | None = None
        self.divergence_reason: str | None = None
        #: (env step, max |Q|) of the checks the growth test may still compare with, oldest first.
        self._history: deque[tuple[int, float]] = deque()
        self._feed = StatsFeed(check_freq, n_samples, counter=attrgetter("n_updates"))
        self._worst_ratio = -math.inf

    def q_bound(self, scale: float | None = None) -> float | None:
        """``scale * max|r| / (1 - gamma) + atol`` with the rewards seen so far.

        :param scale: multiple of ``max|r| / (1 - gamma)``; None: ``margin``
        :return: the bound in return units, or None when gamma = 1
        """
        gamma = float(cast(OffPolicyAlgorithm, self.model).gamma)
        scale = self.margin if scale is None else scale
        return None if gamma >= 1 else scale * self.max_abs_reward / (1 - gamma) + self.atol

    def _measure(self, force: bool = False) -> QSample | None:
        """Q statistics when the critic was updated since the last check (and a replay check is due), else None."""
        stats = self._feed.read(self.model, self.num_timesteps, force=force)
        return None if stats is None or stats.q_max is None else stats_q_sample(stats)

    def _earlier(self, step: int) -> float | None:
        """:return: max |Q| at the latest check at least ``growth_window_steps`` before ``step`` (None: none yet)"""
        if self._history and not isinstance(self._history[0], tuple):
            self._history.clear()  # a 0.1.0 checkpoint's history held values without their steps
        while len(self._history) > 1 and self._history[1][0] <= step - self.growth_window_steps:
            self._history.popleft()
        if self._history and self._history[0][0] <= step - self.growth_window_steps:
            return self._history[0][1]
        return None

    def _record(self, sample: QSample, bound: float | None, diverged: bool, earlier: float | None) -> None:
        for key in ("q_mean", "q_max", "q_abs_max", "policy_q_mean", "target_q_mean", "target_q_max"):
            if getattr(sample, key) is not None:
                self.logger.record(f"health/{key}", getattr(sample, key))
        if bound is not None:
            self.logger.record("health/q_bound", bound)
        if earlier is not None:
            self.logger.record("health/q_growth", sample.q_abs_max / max(earlier, 1e-12))
        self.logger.record("health/q_divergence", float(diverged))
        ratio = sample.q_abs_max / bound if bound else sample.q_abs_max
        if not ratio <= self._worst_ratio:  # NaN counts as worst
            self.worst, self._worst_ratio = (sample.q_abs_max, bound), ratio

    def _on_training_start(self) -> None:
        self._feed.restart()  # learn(reset_num_timesteps=True) restarts the timestep count

    def _on_step(self) -> bool:
        rewards = self.locals.get("rewards")
        if rewards is not None and len(rewards) > 0:
            self.max_abs_reward = max(self.max_abs_reward, float(np.max(np.abs(rewards))))
        return self._check()

    def _on_training_end(self) -> None:
        # Judge the critic left by the last train() call, which ran after the last _on_step.
        self._check(force=True)

    def _check(self, force: bool = False) -> bool:
        """Measure, test and report once; return False to stop training."""
        sample = self._measure(force)
        if sample is None:
            return True
        self.last_sample = sample
        earlier = self._earlier(self.num_timesteps)
        self._history.append((self.num_timesteps, sample.q_abs_max))
        bound, floor = self.q_bound(), self.q_bound(self.growth_floor)
        reason = divergence_reason(sample.q_abs_max, earlier, bound, floor, self.growth_factor)
        self._record(sample, bound, diverged=reason is not None, earlier=earlier)
        if reason is None:
            return True
        if self.diverged_at_step is None:
            self.diverged_at_step, self.diverged_at_update = self.num_timesteps, sample.n_updates
            self.divergence_reason = reason
            warn_health(f"Q divergence at timestep {self.num_timesteps} after {sample.n_updates} updates: {reason}")
        continue_training = keep_training(self.model, self.stop_on_divergence, self.checkpoint_path)
        return continue_training

    def verdict(self) -> HealthVerdict:
        """Whether Q stayed finite, within the bound and without runaway growth.

        :return: value = max |Q| of the check with the largest |Q| / bound, threshold = that check's bound
        """
        if self.worst is None:
            return HealthVerdict(None, None, None, "no Q check ran (no gradient update yet)")
        value, bound = self.worst
        if self.divergence_reason is not None:
            detail = f"diverged at timestep {self.diverged_at_step} after {self.diverged_at_update} updates: "
            return HealthVerdict(False, value, bound, detail + self.divergence_reason)
        return HealthVerdict(True, value, bound, f"max |Q| {value:.4g} within the bound, no runaway growth")

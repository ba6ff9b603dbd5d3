"""Actor saturation: a tanh actor pinned at +-1 has (numerically) zero gradient and stops learning.

Measured on CarRacing with separate encoders and lr 1e-3, the actor's pre-tanh outputs grew from 0.05 to 140 within
100 updates while every actor gradient read 0.0; the gradient-norm and Q checks stayed green. The original system
ended the same way (96% / 86% of steer / throttle actions saturated). This check makes it visible.
"""

from __future__ import annotations

import os

import torch as th

from sb3_carla_td3.callbacks.actor_check import ActorCheckCallback
from sb3_carla_td3.callbacks.utils import is_count, is_number, require
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, keep_training, warn_health
from sb3_carla_td3.train_stats import SATURATED, saturation_share

__all__ = ["SATURATED", "ActionSaturationCallback", "saturation_fraction"]


def saturation_fraction(actions: th.Tensor) -> float:
    """:func:`~sb3_carla_td3.train_stats.saturation_share` as a float: the share of entries with ``|a| > SATURATED``.

    :param actions: a batch of actions scaled to [-1, 1]
    :return: a fraction in [0, 1]
    """
    return float(saturation_share(actions))


class ActionSaturationCallback(ActorCheckCallback):
    """Flag an actor whose deterministic actions stay pinned at the bounds of [-1, 1].

    Reads ``actor_saturation`` of a :class:`~sb3_carla_td3.train_stats.TrainStats`: TD3CNN's after each actor update,
    or, for another algorithm with an actor, a score of its deterministic action (TD3/DDPG's output, SAC/TQC's mean
    action) on ``n_samples`` replay observations every ``check_freq`` env steps, restoring every RNG it draws from.
    Algorithms without an actor are reported N/A. Logs ``health/actor_saturation``; a share above ``max_fraction`` at
    every check for ``patience_steps`` env steps (see :class:`~sb3_carla_td3.callbacks.measurement.Persistence`) sets
    ``health/actor_saturated`` = 1 and warns.

    :param max_fraction: share of saturated action entries above which a check counts as saturated, in (0, 1]
    :param patience_steps: env steps the actor must stay saturated before the alarm, >= 0 (100: 50 TD3CNN actor
        updates at ``policy_delay`` 2)
    :param check_freq: env steps between replay checks (algorithms without their own statistics), >= 1
    :param n_samples: replay observations scored per such check, >= 1
    :param stop_on_saturation: stop training (after a checkpoint) on the alarm
    :param checkpoint_path: where to save the model before such a stop; None saves nothing
    :param warmup_steps: env steps after ``learning_starts`` before the first check, >= 0
    :param verbose: verbosity level; reports go through the logger and warnings
    """

    def __init__(
        self,
        max_fraction: float = 0.9,
        patience_steps: int = 100,
        check_freq: int = 50,
        n_samples: int = 256,
        stop_on_saturation: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        warmup_steps: int = 0,
        verbose: int = 0,
    ) -> None:
        require(is_number(max_fraction, 0) and 0 < max_fraction <= 1, "max_fraction", max_fraction, "a float in (0, 1]")
        require(is_count(n_samples), "n_samples", n_samples, "an int >= 1")
        super().__init__(patience_steps, warmup_steps, check_freq, n_samples, verbose=verbose)
        self.max_fraction = float(max_fraction)
        self.stop_on_saturation, self.checkpoint_path = stop_on_saturation, checkpoint_path
        self.latest: float | None = None
        self.peak: float | None = None
        self.saturated_at_step: int | None = None
        self.fraction_at_alarm: float | None = None

    def _on_step(self) -> bool:
        stats = self._measure()
        if stats is None or stats.actor_saturation is None:
            return True
        fraction = stats.actor_saturation
        self.latest, self.peak = fraction, fraction if self.peak is None else max(self.peak, fraction)
        alarm = self._persists(fraction > self.max_fraction)
        self.logger.record("health/actor_saturation", fraction)
        self.logger.record("health/actor_saturated", float(alarm))
        if not alarm:
            return True
        if self.saturated_at_step is None:
            self.saturated_at_step, self.fraction_at_alarm = self.num_timesteps, fraction
            warn_health(
                f"actor saturated at timestep {self.num_timesteps}: {fraction:.0%} of action entries at |a| > {SATURATED} "
                f"at every check for {self.persistence.held(self.num_timesteps)} env steps "
                f"({self.persistence.failing_checks} checks); its tanh gradient is ~0, so the actor has stopped learning"
            )
        return keep_training(self.model, self.stop_on_saturation, self.checkpoint_path)

    def verdict(self) -> HealthVerdict:
        """Whether the actor never stayed saturated for ``patience_steps`` env steps.

        :return: value = the saturated share at the alarm (else the latest), threshold = ``max_fraction``; N/A (with
            the reason) without an actor or before any check
        """
        if self.latest is None:
            start = f"checks start {self.warmup_steps} env steps after learning_starts"
            reason = self.not_applicable or f"no actor check ran ({start})"
            return HealthVerdict(None, None, self.max_fraction, reason, applies=self.not_applicable is None)
        if self.saturated_at_step is not None:
            detail = (
                f"saturated from timestep {self.saturated_at_step} (at every check for {self.patience_steps} env steps); "
                f"latest share {self.latest:.2f}"
            )
            return HealthVerdict(False, self.fraction_at_alarm, self.max_fraction, detail)
        return HealthVerdict(True, self.latest, self.max_fraction, f"peak share {self.peak:.2f} of saturated actions")

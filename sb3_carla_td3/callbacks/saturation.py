"""Actor saturation: a tanh actor pinned at +-1 has (numerically) zero gradient and stops learning.

Measured on CarRacing with separate encoders and lr 1e-3, the actor's pre-tanh outputs grew from 0.05 to 140 within
100 updates while every actor gradient read 0.0; the gradient-norm and Q checks stayed green. The original system
ended the same way (96% / 86% of steer / throttle actions saturated). This check makes it visible.
"""

from __future__ import annotations

import os

import torch as th

from sb3_carla_td3.callbacks.utils import is_count, is_number, require
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, keep_training, warn_health
from sb3_carla_td3.q_scoring import ActorCheckCallback

#: |action| above this counts as saturated (actions live in [-1, 1]).
SATURATED = 0.99


def saturation_fraction(actions: th.Tensor) -> float:
    """Share of action entries with ``|a| > SATURATED``.

    :param actions: a batch of actions scaled to [-1, 1]
    :return: a fraction in [0, 1]
    """
    return float((actions.abs() > SATURATED).float().mean())


class ActionSaturationCallback(ActorCheckCallback):
    """Flag an actor whose deterministic actions stay pinned at the bounds of [-1, 1].

    TD3CNN: reads ``last_train_stats["actor_saturation"]`` after every train() call with an actor update. Other
    algorithms with an actor: scores its deterministic action (TD3/DDPG's output, SAC/TQC/CrossQ's mean action) on
    ``n_samples`` replay observations every ``check_freq`` steps, restoring every RNG it draws from. Algorithms
    without an actor are reported N/A. Logs ``health/actor_saturation``; saturated for ``patience``
    consecutive checks sets ``health/actor_saturated`` = 1 and warns.

    :param max_fraction: share of saturated action entries above which a check counts as saturated, in (0, 1]
    :param patience: consecutive saturated checks before the alarm, >= 1
    :param check_freq: env steps between checks for algorithms without ``last_train_stats``, >= 1
    :param n_samples: replay observations scored per such check, >= 1
    :param stop_on_saturation: stop training (after a checkpoint) on the alarm
    :param checkpoint_path: where to save the model before such a stop; None saves nothing
    :param verbose: verbosity level; reports go through the logger and warnings
    """

    def __init__(
        self,
        max_fraction: float = 0.9,
        patience: int = 50,
        check_freq: int = 1000,
        n_samples: int = 256,
        stop_on_saturation: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        verbose: int = 0,
    ) -> None:
        require(is_number(max_fraction, 0) and 0 < max_fraction <= 1, "max_fraction", max_fraction, "a float in (0, 1]")
        for name, value in (("patience", patience), ("check_freq", check_freq), ("n_samples", n_samples)):
            require(is_count(value), name, value, "an int >= 1")
        super().__init__(check_freq, n_samples, verbose=verbose)
        self.max_fraction, self.patience = float(max_fraction), patience
        self.stop_on_saturation, self.checkpoint_path = stop_on_saturation, checkpoint_path
        self.latest: float | None = None
        self.peak: float | None = None
        self.streak = 0
        self.saturated_at_step: int | None = None
        self.fraction_at_alarm: float | None = None

    def _on_step(self) -> bool:
        fraction = self._actor_value("actor_saturation", saturation_fraction)
        if fraction is None:
            return True
        self.latest, self.peak = fraction, fraction if self.peak is None else max(self.peak, fraction)
        self.streak = self.streak + 1 if fraction > self.max_fraction else 0
        self.logger.record("health/actor_saturation", fraction)
        alarm = self.streak >= self.patience
        self.logger.record("health/actor_saturated", float(alarm))
        if not alarm:
            return True
        if self.saturated_at_step is None:
            self.saturated_at_step, self.fraction_at_alarm = self.num_timesteps, fraction
            warn_health(
                f"actor saturated at timestep {self.num_timesteps}: {fraction:.0%} of action entries at |a| > {SATURATED} "
                f"for {self.streak} consecutive checks; its tanh gradient is ~0, so the actor has stopped learning"
            )
        return keep_training(self.model, self.stop_on_saturation, self.checkpoint_path)

    def verdict(self) -> HealthVerdict:
        """Whether the actor never stayed saturated for ``patience`` checks.

        :return: value = the saturated share at the alarm (else the latest), threshold = ``max_fraction``
        """
        if self.latest is None:
            return HealthVerdict(None, None, self.max_fraction, self.not_applicable or "no actor update checked yet")
        if self.saturated_at_step is not None:
            detail = (
                f"saturated from timestep {self.saturated_at_step} ({self.patience} consecutive checks); "
                f"latest share {self.latest:.2f}"
            )
            return HealthVerdict(False, self.fraction_at_alarm, self.max_fraction, detail)
        return HealthVerdict(True, self.latest, self.max_fraction, f"peak share {self.peak:.2f} of saturated actions")

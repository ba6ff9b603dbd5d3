"""A blind actor: deterministic actions that no longer depend on the observation.

Measured on CarRacing from pixels (``configs/carracing_pixels.yaml``, seed 2): the first conv layer of the shared
encoder died (no unit positive on any frame by 10K steps), the trunk's LayerNorm then mapped every frame to nearly the
same features, and the actor settled on one action for every observation (std over 200 frames: 0.0004 and 0.000 at
25K steps). The car drove straight off every track; evaluation read -93 -> -76, "increasing", and every other check
stayed green. Seeds 0 and 1 of the same config learned (action std 0.35-0.81). This check makes it visible.
A fresh actor is nearly blind too (std 0.002-0.045 at initialisation, measured on the shipped configs), so
the check starts ``warmup_steps`` after ``learning_starts``.
"""

from __future__ import annotations

import os

from sb3_carla_td3.callbacks.actor_check import ActorCheckCallback
from sb3_carla_td3.callbacks.utils import is_count, is_number, require
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, keep_training, warn_health
from sb3_carla_td3.train_stats import action_spread

__all__ = ["ActorVariationCallback", "action_spread"]


class ActorVariationCallback(ActorCheckCallback):
    """Flag an actor whose deterministic actions stopped depending on the observation.

    Reads ``actor_action_std`` of a :class:`~sb3_carla_td3.train_stats.TrainStats` (the spread of the actor's actions
    over a batch, see :func:`~sb3_carla_td3.train_stats.action_spread`): TD3CNN's after each actor update, or, for
    another algorithm with an actor, a score of its deterministic action on ``n_samples`` replay observations every
    ``check_freq`` env steps, restoring every RNG it draws from; without an actor: N/A. Checks start
    ``warmup_steps`` env steps after ``learning_starts``. Logs ``health/actor_action_std``; a spread below ``min_std``
    at every check for ``patience_steps`` env steps sets ``health/actor_blind`` = 1 and warns.

    :param min_std: the spread below which a check counts as blind, > 0
    :param patience_steps: env steps the actor must stay blind before the alarm, >= 0 (200: 100 TD3CNN actor updates
        at ``policy_delay`` 2)
    :param warmup_steps: env steps after ``learning_starts`` before the first check (a fresh actor is nearly blind), >= 0
    :param check_freq: env steps between replay checks (algorithms without their own statistics), >= 1
    :param n_samples: replay observations scored per such check, >= 2
    :param stop_on_blind: stop training (after a checkpoint) on the alarm
    :param checkpoint_path: where to save the model before such a stop; None saves nothing
    :param verbose: verbosity level; reports go through the logger and warnings
    """

    def __init__(
        self,
        min_std: float = 0.01,
        patience_steps: int = 200,
        warmup_steps: int = 5_000,
        check_freq: int = 50,
        n_samples: int = 256,
        stop_on_blind: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        verbose: int = 0,
    ) -> None:
        require(is_number(min_std, 0), "min_std", min_std, "a float > 0")
        require(is_count(n_samples) and n_samples >= 2, "n_samples", n_samples, "an int >= 2")
        super().__init__(patience_steps, warmup_steps, check_freq, n_samples, min_size=2, verbose=verbose)
        self.min_std = float(min_std)
        self.stop_on_blind, self.checkpoint_path = stop_on_blind, checkpoint_path
        self.latest: float | None = None
        self.lowest: float | None = None
        self.blind_at_step: int | None = None
        self.spread_at_alarm: float | None = None

    def _on_step(self) -> bool:
        stats = self._measure()
        if stats is None or stats.actor_action_std is None:
            return True
        spread = stats.actor_action_std
        self.latest, self.lowest = spread, spread if self.lowest is None else min(self.lowest, spread)
        alarm = self._persists(spread < self.min_std)
        self.logger.record("health/actor_action_std", spread)
        self.logger.record("health/actor_blind", float(alarm))
        if not alarm:
            return True
        if self.blind_at_step is None:
            self.blind_at_step, self.spread_at_alarm = self.num_timesteps, spread
            warn_health(
                f"actor blind at timestep {self.num_timesteps}: its deterministic actions vary by at most {spread:.2g} "
                f"(std over a replay batch) at every check for {self.persistence.held(self.num_timesteps)} env steps "
                f"({self.persistence.failing_checks} checks), below {self.min_std:g}; it acts the same on every "
                "observation (a dead encoder, or features the trunk maps to one point)"
            )
        return keep_training(self.model, self.stop_on_blind, self.checkpoint_path)

    def verdict(self) -> HealthVerdict:
        """Whether the actor's actions never stayed independent of the observation for ``patience_steps`` env steps.

        :return: value = the spread at the alarm (else the latest), threshold = ``min_std``; N/A (with the reason)
            without an actor or before the first check
        """
        if self.latest is None:
            start = f"checks start {self.warmup_steps} env steps after learning_starts"
            detail = self.not_applicable or f"not checked yet ({start})"
            return HealthVerdict(None, None, self.min_std, detail, applies=self.not_applicable is None)
        if self.blind_at_step is not None:
            detail = (
                f"blind from timestep {self.blind_at_step} (at every check for {self.patience_steps} env steps); "
                f"latest spread {self.latest:.3g}"
            )
            return HealthVerdict(False, self.spread_at_alarm, self.min_std, detail)
        return HealthVerdict(True, self.latest, self.min_std, f"lowest spread {self.lowest:.3g} after the warm-up")

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

import torch as th

from sb3_carla_td3.callbacks.utils import is_count, is_number, require
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, keep_training, warn_health
from sb3_carla_td3.q_scoring import ActorCheckCallback


def action_spread(actions: th.Tensor) -> float:
    """How much the actions of a batch of observations differ: the largest per-dimension standard deviation.

    One dimension that follows the observation (steering, say) is enough for an actor to see; 0 means every
    observation got the same action.

    :param actions: a batch of actions, ``(batch, action_dim)``, scaled to [-1, 1]
    :return: ``max_j std_i actions[i, j]`` (population std: 0.0 for a batch of one)
    """
    return float(actions.float().std(dim=0, correction=0).max())


class ActorVariationCallback(ActorCheckCallback):
    """Flag an actor whose deterministic actions stopped depending on the observation.

    TD3CNN: reads ``last_train_stats["actor_action_std"]`` (the spread of the actor's actions over the replay batch of
    its latest update, see :func:`action_spread`) after every train() call with an actor update. Other algorithms with
    an actor: scores its deterministic action on ``n_samples`` replay observations every ``check_freq`` steps,
    restoring every RNG it draws from; without an actor: N/A. Checks start ``warmup_steps`` env steps after
    ``learning_starts``. Logs ``health/actor_action_std``; a spread below ``min_std`` for ``patience`` consecutive
    checks sets ``health/actor_blind`` = 1 and warns.

    :param min_std: the spread below which a check counts as blind, > 0
    :param patience: consecutive blind checks before the alarm, >= 1
    :param warmup_steps: env steps after ``learning_starts`` before the first check (a fresh actor is nearly blind), >= 0
    :param check_freq: env steps between checks for algorithms without ``last_train_stats``, >= 1
    :param n_samples: replay observations scored per such check, >= 2
    :param stop_on_blind: stop training (after a checkpoint) on the alarm
    :param checkpoint_path: where to save the model before such a stop; None saves nothing
    :param verbose: verbosity level; reports go through the logger and warnings
    """

    def __init__(
        self,
        min_std: float = 0.01,
        patience: int = 100,
        warmup_steps: int = 5_000,
        check_freq: int = 1000,
        n_samples: int = 256,
        stop_on_blind: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        verbose: int = 0,
    ) -> None:
        require(is_number(min_std, 0), "min_std", min_std, "a float > 0")
        for name, value in (("patience", patience), ("check_freq", check_freq)):
            require(is_count(value), name, value, "an int >= 1")
        require(is_count(n_samples) and n_samples >= 2, "n_samples", n_samples, "an int >= 2")
        require(isinstance(warmup_steps, int) and not isinstance(warmup_steps, bool) and warmup_steps >= 0,
                "warmup_steps", warmup_steps, "an int >= 0")  # fmt: skip
        super().__init__(check_freq, n_samples, verbose=verbose)
        self.min_std, self.patience, self.warmup_steps = float(min_std), patience, warmup_steps
        self.stop_on_blind, self.checkpoint_path = stop_on_blind, checkpoint_path
        self.latest: float | None = None
        self.lowest: float | None = None
        self.streak = 0
        self.blind_at_step: int | None = None
        self.spread_at_alarm: float | None = None

    def _measure(self) -> float | None:
        if not self._applicable() or self.num_timesteps < getattr(self.model, "learning_starts", 0) + self.warmup_steps:
            return None  # no actor (N/A, said even inside the warm-up), or still warming up
        return self._actor_value("actor_action_std", action_spread, min_size=2)

    def _on_step(self) -> bool:
        spread = self._measure()
        if spread is None:
            return True
        self.latest, self.lowest = spread, spread if self.lowest is None else min(self.lowest, spread)
        self.streak = self.streak + 1 if spread < self.min_std else 0
        self.logger.record("health/actor_action_std", spread)
        alarm = self.streak >= self.patience
        self.logger.record("health/actor_blind", float(alarm))
        if not alarm:
            return True
        if self.blind_at_step is None:
            self.blind_at_step, self.spread_at_alarm = self.num_timesteps, spread
            warn_health(
                f"actor blind at timestep {self.num_timesteps}: its deterministic actions vary by at most {spread:.2g} "
                f"(std over a replay batch) for {self.streak} consecutive checks, below {self.min_std:g}; it acts the "
                "same on every observation (a dead encoder, or features the trunk maps to one point)"
            )
        return keep_training(self.model, self.stop_on_blind, self.checkpoint_path)

    def verdict(self) -> HealthVerdict:
        """Whether the actor's actions never stayed independent of the observation for ``patience`` checks.

        :return: value = the spread at the alarm (else the latest), threshold = ``min_std``
        """
        if self.latest is None:
            detail = self.not_applicable or f"not checked yet (checks start {self.warmup_steps} steps after learning_starts)"
            return HealthVerdict(None, None, self.min_std, detail)
        if self.blind_at_step is not None:
            detail = (
                f"blind from timestep {self.blind_at_step} ({self.patience} consecutive checks); "
                f"latest spread {self.latest:.3g}"
            )
            return HealthVerdict(False, self.spread_at_alarm, self.min_std, detail)
        return HealthVerdict(True, self.latest, self.min_std, f"lowest spread {self.lowest:.3g} after the warm-up")

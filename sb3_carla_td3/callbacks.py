"""Training-health callbacks for any SB3 off-policy pipeline: gradient norms, Q-values, episode length, returns.

Each callback watches one signal and logs it under ``health/*`` through the model's logger. With TD3CNN (detected
by its ``last_train_stats``) they read the algorithm's per-update statistics; with plain TD3, DDPG, SAC or TQC they
measure by themselves (see :mod:`sb3_carla_td3.health`). SB3 runs ``train()`` after a rollout, outside the
callbacks: its effects show at the next ``_on_step``, and those of the last call at ``_on_training_end``.
"""

from __future__ import annotations

import math
import os
from collections import deque
from typing import Any, cast

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from sb3_carla_td3.health import (
    ROLES,
    HealthVerdict,
    QSample,
    RewardTrendCallback,
    StepNormRecorder,
    clip_verdict,
    divergence_reason,
    episode_infos,
    find_optimizers,
    format_verdicts,
    is_count,
    is_number,
    keep_training,
    require,
    score_critic,
    stats_q_sample,
    warn_health,
)
from sb3_carla_td3.saturation import ActionSaturationCallback

__all__ = [
    "ActionSaturationCallback",
    "EpisodeCollapseCallback",
    "GradientNormCallback",
    "QValueCallback",
    "RewardTrendCallback",
    "TrainingHealthCallback",
]


def _train_stats(model: BaseAlgorithm) -> dict[str, float]:
    """:return: TD3CNN's ``last_train_stats`` (the latest update's norms and Q statistics); {} for other algorithms"""
    return getattr(model, "last_train_stats", {})


class GradientNormCallback(BaseCallback):
    """Log the global L2 gradient norm of every actor and critic update and check it against a clip limit.

    Plain SB3: a step pre-hook on each optimizer measures exactly the gradients that step consumes (after any
    clipping); ``health/<net>_grad_norm`` is the mean and ``health/<net>_grad_norm_max`` the max over the updates of
    the last ``train()`` call. TD3CNN: ``last_train_stats`` give the latest post-clip norm, the call's max, the
    pre-clip norm (``health/<net>_grad_norm_pre``) and the clip fraction (``health/<net>_clip_fraction``). A norm
    above ``limit * (1 + rtol)``, or a non-finite one, is a violation: ``health/<net>_grad_clip_violation`` = 1 and a
    warning. ``<net>`` is ``actor`` or ``critic``.

    :param actor_max_norm: limit on the actor's post-clip norm; None: the model's ``actor_grad_clip`` if it has one,
        else no limit (the norm is only logged)
    :param critic_max_norm: the same for the critic (``critic_grad_clip``)
    :param rtol: relative tolerance of the limit check, in [0, 1) (float32 round-off of a clipped norm)
    :param stop_on_violation: stop training (``_on_step`` returns False) at a violation
    :param checkpoint_path: where to save the model before such a stop; None saves nothing
    :param verbose: verbosity level; reports go through the logger and warnings
    """

    def __init__(
        self,
        actor_max_norm: float | None = None,
        critic_max_norm: float | None = None,
        rtol: float = 1e-4,
        stop_on_violation: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        for name, limit in (("actor_max_norm", actor_max_norm), ("critic_max_norm", critic_max_norm)):
            require(is_number(limit, 0, allow_none=True), name, limit, "a positive finite float or None (no limit)")
        require(is_number(rtol) and 0 <= rtol < 1, "rtol", rtol, "a float in [0, 1)")
        self.limits: dict[str, float | None] = {"actor": actor_max_norm, "critic": critic_max_norm}
        self.rtol, self.stop_on_violation, self.checkpoint_path = float(rtol), stop_on_violation, checkpoint_path
        #: Largest norm over every update measured (None until the network is updated).
        self.max_norm: dict[str, float | None] = dict.fromkeys(ROLES)
        #: Norms read at the latest check (hooks: one per optimizer step; TD3CNN: latest and max post-clip norm).
        self.last_norms: dict[str, list[float]] = {role: [] for role in ROLES}
        #: Optimizer steps measured (hooks) or train() calls read (TD3CNN).
        self.n_measurements: dict[str, int] = dict.fromkeys(ROLES, 0)
        self.violated_at_step: int | None = None
        self._recorder: StepNormRecorder | None = None
        self._stats_updates: float | None = None

    def _init_callback(self) -> None:
        for role in ROLES:
            if self.limits[role] is None:
                self.limits[role] = getattr(self.model, f"{role}_grad_clip", None)
        self._uses_stats = hasattr(self.model, "last_train_stats")
        self._optimizers = {} if self._uses_stats else find_optimizers(self.model)
        missing = [role for role in ROLES if not self._uses_stats and role not in self._optimizers]
        if missing:
            warn_health(f"{type(self).__name__}: no optimizer found for {missing} on {type(self.model).__name__}")

    def _on_training_start(self) -> None:
        if self._uses_stats:
            self._stats_updates = _train_stats(self.model).get("n_updates")
        else:
            self._recorder = StepNormRecorder(self._optimizers)

    def _read_norms(self) -> dict[str, list[float]]:
        """New norms per network since the last read; with TD3CNN also logs its pre-clip norm and clip fraction."""
        if self._recorder is not None:
            return {role: self._recorder.pop(role) for role in self._optimizers}
        stats = _train_stats(self.model) if self._uses_stats else {}
        if stats.get("n_updates") == self._stats_updates:
            return {}
        self._stats_updates = stats.get("n_updates")
        for key in (f"{role}_{name}" for role in ROLES for name in ("grad_norm_pre", "clip_fraction")):
            if key in stats:
                self.logger.record(f"health/{key}", stats[key])
        keys = {role: (f"{role}_grad_norm_post", f"{role}_grad_norm_post_max") for role in ROLES}
        return {role: [stats[key] for key in pair] for role, pair in keys.items() if pair[0] in stats}

    def _check(self, role: str, norms: list[float]) -> bool:
        """Log one network's new norms; return True when they violate its limit."""
        batch_max, previous = float(np.max(norms)), self.max_norm[role]
        self.max_norm[role] = batch_max if previous is None else float(np.max([previous, batch_max]))
        self.last_norms[role] = norms
        self.n_measurements[role] += 1 if self._uses_stats else len(norms)
        self.logger.record(f"health/{role}_grad_norm", float(norms[0] if self._uses_stats else np.mean(norms)))
        self.logger.record(f"health/{role}_grad_norm_max", batch_max)
        limit = self.limits[role]
        violated = not math.isfinite(batch_max) or (limit is not None and batch_max > limit * (1 + self.rtol))
        if limit is not None:
            self.logger.record(f"health/{role}_grad_clip_violation", float(violated))
        if violated and self.violated_at_step is None:
            self.violated_at_step = self.num_timesteps
            warn_health(
                f"{role} gradient norm {batch_max:.6g} exceeds its limit {limit} (rtol {self.rtol:g}) "
                f"at timestep {self.num_timesteps}"
            )
        return violated

    def _on_step(self) -> bool:
        norms = {role: values for role, values in self._read_norms().items() if values}
        if not norms:
            return True
        violated = [self._check(role, values) for role, values in norms.items()]
        continue_training = keep_training(self.model, any(violated) and self.stop_on_violation, self.checkpoint_path)
        return continue_training

    def _on_training_end(self) -> None:
        # The last train() call ran after the last _on_step: read it before the hooks go.
        for role, values in self._read_norms().items():
            if values:
                self._check(role, values)
        if self._recorder is not None:
            self._recorder.remove()
            self._recorder = None

    def verdicts(self) -> dict[str, HealthVerdict]:
        """Per network, whether the largest post-clip norm over every update stayed within the limit.

        :return: verdicts keyed ``"actor_grad_clip"`` and ``"critic_grad_clip"``; value = max norm, threshold = limit
        """
        return {f"{r}_grad_clip": clip_verdict(r, self.max_norm[r], self.limits[r], self.rtol) for r in ROLES}


class QValueCallback(BaseCallback):
    """Log Q-values after training updates and flag (optionally stop on) divergence.

    Plain SB3: every ``check_freq`` timesteps the critic (and, for TD3/DDPG/SAC, its one-step target) is scored on
    ``n_samples`` replay transitions. TD3CNN: after every ``train()`` call, ``last_train_stats`` give the latest
    update's Q statistics. The tested quantity is the largest |Q| (``health/q_abs_max``), over the replay actions and
    the actor's own, Q(s, pi(s)) (``health/policy_q_mean``). With ``B = max|r| / (1 - gamma)``,
    max|r| the largest |reward| observed so far (``self.locals["rewards"]``), there are two tests:

    - bound: |Q| > ``margin * B + atol`` (logged as ``health/q_bound``); no return can be larger than B;
    - growth: |Q| more than ``growth_factor`` times its value ``growth_window`` checks ago while above
      ``growth_floor * B + atol`` (``health/q_growth`` logs the ratio): fast growth past what returns allow, caught
      before the margin is used up.

    Non-finite Q-values always count. A violation logs ``health/q_divergence`` = 1, warns with the numbers and
    records ``diverged_at_step`` / ``diverged_at_update`` (first time). With gamma = 1 neither test applies.

    :param check_freq: environment timesteps between replay-scoring checks (all envs together; plain SB3), >= 1
    :param n_samples: replay transitions scored per check (plain SB3), >= 1
    :param margin: multiple of B tolerated by the bound test, > 0
    :param atol: absolute slack added to the bound and the floor (return units), >= 0; keeps an untrained critic's
        near-zero outputs quiet while rewards are zero or tiny
    :param growth_factor: growth over ``growth_window`` checks counted as divergence, > 1; None disables the test
    :param growth_window: checks between the two values the growth test compares, >= 1
    :param growth_floor: the growth test applies only above ``growth_floor * B + atol``, >= 0
    :param stop_on_divergence: stop training (``_on_step`` returns False) at the first divergence
    :param checkpoint_path: where to save the model before such a stop; None saves nothing
    :param verbose: verbosity level; reports go through the logger and warnings
    """

    def __init__(
        self,
        check_freq: int = 1000,
        n_samples: int = 256,
        margin: float = 1.5,
        atol: float = 1.0,
        growth_factor: float | None = 10.0,
        growth_window: int = 5,
        growth_floor: float = 1.0,
        stop_on_divergence: bool = False,
        checkpoint_path: str | os.PathLike[str] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        for name, count in (("check_freq", check_freq), ("n_samples", n_samples), ("growth_window", growth_window)):
            require(is_count(count), name, count, "an int >= 1")
        require(is_number(margin, 0), "margin", margin, "a positive finite float")
        for name, value in (("atol", atol), ("growth_floor", growth_floor)):
            require(is_number(value) and value >= 0, name, value, "a finite float >= 0")
        require(is_number(growth_factor, 1, allow_none=True), "growth_factor", growth_factor, "a float > 1 or None")
        self.check_freq, self.n_samples, self.margin, self.atol = check_freq, n_samples, float(margin), float(atol)
        self.growth_factor, self.growth_window, self.growth_floor = growth_factor, growth_window, float(growth_floor)
        self.stop_on_divergence, self.checkpoint_path = stop_on_divergence, checkpoint_path
        self.max_abs_reward = 0.0
        self.last_sample: QSample | None = None
        #: (max |Q|, bound) of the check with the largest |Q| / bound.
        self.worst: tuple[float, float | None] | None = None
        self.diverged_at_step: int | None = None
        self.diverged_at_update: int | None = None
        self.divergence_reason: str | None = None
        self._history: deque[float] = deque(maxlen=growth_window + 1)
        self._last_check_step: int | None = None
        self._worst_ratio = -math.inf

    def q_bound(self, scale: float | None = None) -> float | None:
        """``scale * max|r| / (1 - gamma) + atol`` with the rewards seen so far.

        :param scale: multiple of ``max|r| / (1 - gamma)``; None: ``margin``
        :return: the bound in return units, or None when gamma = 1
        """
        gamma = float(cast(OffPolicyAlgorithm, self.model).gamma)
        scale = self.margin if scale is None else scale
        return None if gamma >= 1 else scale * self.max_abs_reward / (1 - gamma) + self.atol

    def _measure(self) -> QSample | None:
        """Q statistics when the critic was updated since the last check, else None."""
        stats = getattr(self.model, "last_train_stats", None)
        n_updates = getattr(self.model, "_n_updates", 0) if stats is None else stats.get("n_updates", 0)
        if not n_updates or (self.last_sample is not None and self.last_sample.n_updates == n_updates):
            return None
        if stats is None:
            return score_critic(self.model, self.n_samples)
        return stats_q_sample(stats) if "q_max" in stats else None

    def _record(self, sample: QSample, bound: float | None, diverged: bool) -> None:
        for key in ("q_mean", "q_max", "q_abs_max", "policy_q_mean", "target_q_mean", "target_q_max"):
            if getattr(sample, key) is not None:
                self.logger.record(f"health/{key}", getattr(sample, key))
        if bound is not None:
            self.logger.record("health/q_bound", bound)
        if len(self._history) > self.growth_window:
            self.logger.record("health/q_growth", sample.q_abs_max / max(self._history[0], 1e-12))
        self.logger.record("health/q_divergence", float(diverged))
        ratio = sample.q_abs_max / bound if bound else sample.q_abs_max
        if not ratio <= self._worst_ratio:  # NaN counts as worst
            self.worst, self._worst_ratio = (sample.q_abs_max, bound), ratio

    def _on_training_start(self) -> None:
        self._last_check_step = None  # learn(reset_num_timesteps=True) restarts the timestep count

    def _on_step(self) -> bool:
        rewards = self.locals.get("rewards")
        if rewards is not None and len(rewards) > 0:
            self.max_abs_reward = max(self.max_abs_reward, float(np.max(np.abs(rewards))))
        paced = not hasattr(self.model, "last_train_stats")  # reading TD3CNN's stats is free: check every train()
        if paced and self._last_check_step is not None and self.num_timesteps - self._last_check_step < self.check_freq:
            return True
        return self._check()

    def _on_training_end(self) -> None:
        # Judge the critic left by the last train() call, which ran after the last _on_step.
        self._check()

    def _check(self) -> bool:
        """Measure, test and report once; return False to stop training."""
        sample = self._measure()
        if sample is None:
            return True
        self._last_check_step, self.last_sample = self.num_timesteps, sample
        self._history.append(sample.q_abs_max)
        earlier = self._history[0] if len(self._history) > self.growth_window else None
        bound, floor = self.q_bound(), self.q_bound(self.growth_floor)
        reason = divergence_reason(sample.q_abs_max, earlier, bound, floor, self.growth_factor)
        self._record(sample, bound, diverged=reason is not None)
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


#: Attributes of a check that wire it to one ``learn()`` call (BaseCallback's own, optimizer hooks), never saved.
_WIRING = frozenset(
    {"model", "n_calls", "num_timesteps", "verbose", "locals", "globals", "parent", "_recorder", "_optimizers", "_uses_stats"}
)


def _check_state(check: BaseCallback) -> dict[str, Any]:
    return {key: value for key, value in vars(check).items() if key not in _WIRING}


class TrainingHealthCallback(CallbackList):
    """All health checks in one callback for ``model.learn(callback=...)``, with a final :meth:`verdict`.

    Runs a :class:`GradientNormCallback`, a :class:`QValueCallback`, an :class:`EpisodeCollapseCallback`, a
    :class:`RewardTrendCallback` and an :class:`ActionSaturationCallback`, and stops training when one of them
    does (only those built with a stop option).

    :param gradients: the gradient-norm check; None: ``GradientNormCallback()``
    :param q_values: the Q-value check; None: ``QValueCallback()``
    :param episodes: the episode-length check; None: ``EpisodeCollapseCallback()``
    :param rewards: the return-trend check; None: ``RewardTrendCallback()``
    :param saturation: the actor-saturation check; None: ``ActionSaturationCallback()``
    :param check_freq: env steps between the Q-value and saturation checks that this callback builds itself (those
        left None above); None: their defaults (1,000)
    """

    def __init__(
        self,
        gradients: GradientNormCallback | None = None,
        q_values: QValueCallback | None = None,
        episodes: EpisodeCollapseCallback | None = None,
        rewards: RewardTrendCallback | None = None,
        saturation: ActionSaturationCallback | None = None,
        check_freq: int | None = None,
    ) -> None:
        self.gradients = GradientNormCallback() if gradients is None else gradients
        every = QValueCallback().check_freq if check_freq is None else check_freq
        self.q_values = QValueCallback(check_freq=every) if q_values is None else q_values
        self.episodes = EpisodeCollapseCallback() if episodes is None else episodes
        self.rewards = RewardTrendCallback() if rewards is None else rewards
        self.saturation = ActionSaturationCallback(check_freq=every) if saturation is None else saturation
        super().__init__([self.gradients, self.q_values, self.episodes, self.rewards, self.saturation])

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """What the checks have measured so far (alarms, peaks, baselines, windows), for a checkpoint.

        A resumed run restores it with :meth:`load_state_dict`, so that its report judges the whole run, not only the
        steps after the resume. Wiring that every ``learn()`` rebuilds (model, logger, optimizer hooks) is left out.

        :return: one picklable dict per check, keyed by attribute name (``"gradients"``, ``"q_values"``, ...)
        """
        return {name: _check_state(check) for name, check in self._checks().items()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore what :meth:`state_dict` returned (before ``learn()`` continues the run).

        :param state: the saved state; checks missing from it keep their fresh state
        """
        for name, check in self._checks().items():
            vars(check).update(state.get(name, {}))

    def _checks(self) -> dict[str, BaseCallback]:
        return {
            "gradients": self.gradients,
            "q_values": self.q_values,
            "episodes": self.episodes,
            "rewards": self.rewards,
            "saturation": self.saturation,
        }

    def verdict(self) -> dict[str, HealthVerdict]:
        """Judge every criterion on what was measured so far.

        :return: verdicts keyed ``"actor_grad_clip"``, ``"critic_grad_clip"``, ``"q_bound"``, ``"reward_trend"``,
            ``"episode_length"``, ``"actor_saturation"``
        """
        return self.gradients.verdicts() | {
            "q_bound": self.q_values.verdict(),
            "reward_trend": self.rewards.verdict(),
            "episode_length": self.episodes.verdict(),
            "actor_saturation": self.saturation.verdict(),
        }

    def summary(self) -> str:
        """The verdicts as a plain-text table, one criterion per line (PASS / FAIL / N/A, value, threshold, detail).

        :return: the table
        """
        return format_verdicts(self.verdict())

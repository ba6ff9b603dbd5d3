"""Measurements and judgements behind the training-health callbacks, and the return-trend callback.

Everything here works on any SB3 off-policy algorithm (TD3, DDPG, SAC, sb3-contrib's TQC) without touching its
``train()``: gradient norms come from ``torch.optim.Optimizer.register_step_pre_hook``, Q-values from scoring the
critic on a replay sample, episode statistics from Monitor's ``info["episode"]``. The callbacks themselves live in
:mod:`sb3_carla_td3.callbacks`; ``RewardTrendCallback`` stays importable from here, where it used to live.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

#: The networks whose optimizers the gradient monitor watches, in report order.
ROLES = ("actor", "critic")


class TrainingHealthWarning(UserWarning):
    """A training-health check failed (gradient limit, Q divergence, episode collapse or degrading returns)."""


@dataclass(frozen=True)
class HealthVerdict:
    """The outcome of one health criterion at the end of (or during) training.

    :param passed: True (healthy), False (the criterion failed) or None (not enough data to judge)
    :param value: the measured quantity, in the criterion's own unit; None when nothing was measured
    :param threshold: the limit ``value`` is judged against; None when no limit applies
    :param detail: one sentence with the numbers behind the outcome
    """

    passed: bool | None
    value: float | None
    threshold: float | None
    detail: str

    def __str__(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "N/A"}[self.passed]
        return f"{status:4s}  value={_fmt(self.value)}  threshold={_fmt(self.threshold)}  {self.detail}"


def _fmt(number: float | None) -> str:
    return "-" if number is None else f"{number:.4g}"


def format_verdicts(verdicts: dict[str, HealthVerdict]) -> str:
    """Render verdicts as an aligned plain-text table, one criterion per line.

    :param verdicts: verdicts keyed by criterion name
    :return: the table, without a trailing newline
    """
    width = max((len(name) for name in verdicts), default=0)
    return "\n".join(f"{name:<{width}s}  {verdict}" for name, verdict in verdicts.items())


def save_checkpoint(model: BaseAlgorithm, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` before training is stopped, creating the parent folder.

    :param model: the algorithm to save
    :param path: target file; SB3 appends ``.zip`` when it has no suffix
    :return: the path of the written file
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    model.save(target)
    return target if target.suffix else target.with_suffix(".zip")


def keep_training(model: BaseAlgorithm, stop: bool, checkpoint_path: str | os.PathLike[str] | None) -> bool:
    """Turn a callback's stop decision into ``_on_step``'s return value, saving the model first when it stops.

    :param model: the algorithm being trained
    :param stop: whether a failed check asks to stop
    :param checkpoint_path: where to save before stopping; None saves nothing
    :return: ``not stop``
    """
    if stop and checkpoint_path is not None:
        save_checkpoint(model, checkpoint_path)
    return not stop


def find_optimizers(model: BaseAlgorithm) -> dict[str, th.optim.Optimizer]:
    """Find the actor's and the critic's optimizers as SB3 stores them (``<network>.optimizer``).

    TD3, DDPG, SAC, TQC and CrossQ expose ``model.actor`` / ``model.critic`` (aliases of the policy's); the policy is
    searched too, for algorithms that only keep them there.

    :param model: an off-policy SB3 algorithm
    :return: optimizers keyed by ``"actor"`` / ``"critic"``; a network without an optimizer is left out
    """
    found: dict[str, th.optim.Optimizer] = {}
    for role in ROLES:
        for owner in (model, getattr(model, "policy", None)):
            optimizer = getattr(getattr(owner, role, None), "optimizer", None)
            if isinstance(optimizer, th.optim.Optimizer):
                found[role] = optimizer
                break
    return found


class StepNormRecorder:
    """Records, on every ``optimizer.step()``, the global L2 norm of the gradients that step consumes.

    The norm is ``sqrt(sum_i ||g_i||^2)`` over the ``.grad`` of every parameter in the optimizer's ``param_groups``
    (parameters without a gradient are skipped, as the step skips them), read by a step pre-hook, i.e. after any
    clipping the algorithm did. Norms stay on the device until :meth:`pop`, so recording adds no host sync.

    :param optimizers: the optimizers to watch, keyed by a name (e.g. ``"actor"``)
    """

    def __init__(self, optimizers: dict[str, th.optim.Optimizer]) -> None:
        self._pending: dict[str, list[th.Tensor]] = {name: [] for name in optimizers}
        self._handles = [opt.register_step_pre_hook(partial(self._record, name)) for name, opt in optimizers.items()]

    def _record(self, name: str, optimizer: th.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            self._pending[name].append(nn.utils.get_total_norm(grads, norm_type=2.0).detach())

    def pop(self, name: str) -> list[float]:
        """Return and forget the norms recorded for ``name`` since the last call.

        :param name: the optimizer's name as given to the constructor
        :return: one norm per optimizer step, in step order (empty when it did not step)
        """
        pending, self._pending[name] = self._pending[name], []
        return th.stack(pending).float().cpu().tolist() if pending else []

    def remove(self) -> None:
        """Unregister every hook (safe to call twice)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


@dataclass(frozen=True)
class QSample:
    """Q statistics of one check, in return units.

    :param q_mean: mean over samples and critics of Q(s, a)
    :param q_max: largest Q(s, a)
    :param q_abs_max: largest magnitude, the quantity tested for divergence (catches negative blow-ups too)
    :param target_q_mean: mean of r + gamma (1 - d) min Q_target(s', a'); None when not computed
    :param target_q_max: largest target; None when not computed
    :param n_updates: gradient updates the algorithm had done when the sample was taken
    :param policy_q_mean: mean Q of the actor's own actions, Q(s, pi(s)), the value the actor maximises; it counts in
        ``q_abs_max``. In the original system it reached 1e5-1e6 while the replay Q stayed at 40-90. None when not
        computed
    """

    q_mean: float
    q_max: float
    q_abs_max: float
    target_q_mean: float | None
    target_q_max: float | None
    n_updates: int
    policy_q_mean: float | None = None


def critic_values(output: th.Tensor | Sequence[th.Tensor]) -> th.Tensor:
    """Bring a critic's output to ``(batch, n_critics)`` Q-values.

    :param output: a tuple of ``(batch, 1)`` tensors (TD3, DDPG, SAC) or ``(batch, n_critics, n_quantiles)``
        quantiles (TQC, averaged over quantiles)
    :return: the Q-values, one column per critic
    """
    if isinstance(output, th.Tensor):
        return output.mean(dim=-1) if output.ndim == 3 else output.reshape(output.shape[0], -1)
    return th.cat([q.reshape(q.shape[0], -1).mean(dim=1, keepdim=True) for q in output], dim=1)


def _target_values(model: Any, data: Any) -> th.Tensor | None:
    """One-step targets r + gamma (1 - d) min Q_target(s', a'), as the algorithm's own ``train()`` forms them.

    :param model: TD3/DDPG (a' from the target actor, without smoothing noise) or SAC (a' sampled, minus the entropy
        term); other critics (TQC's truncated quantile mixture) get None
    :param data: a replay sample (``ReplayBufferSamples``; n-step ``discounts`` are used when present)
    :return: ``(batch, 1)`` targets, or None
    """
    critic_target, next_obs = getattr(model, "critic_target", None), data.next_observations
    if critic_target is None:
        return None
    actor_target = getattr(model, "actor_target", None)
    if actor_target is not None:
        next_actions, entropy = actor_target(next_obs), 0.0
    elif hasattr(model.actor, "action_log_prob"):
        next_actions, log_prob = model.actor.action_log_prob(next_obs)
        log_ent_coef = getattr(model, "log_ent_coef", None)
        ent_coef = th.exp(log_ent_coef.detach()) if log_ent_coef is not None else model.ent_coef_tensor
        entropy = ent_coef * log_prob.reshape(-1, 1)
    else:
        return None
    output = critic_target(next_obs, next_actions)
    if isinstance(output, th.Tensor):
        return None  # TQC: the target is a truncated quantile mixture, not a min over critics.
    next_q = critic_values(output).min(dim=1, keepdim=True).values - entropy
    discounts = data.discounts if getattr(data, "discounts", None) is not None else model.gamma
    return data.rewards + (1 - data.dones) * discounts * next_q


@contextlib.contextmanager
def preserved_rng(device: th.device) -> Iterator[None]:
    """Restore the global Python, NumPy and torch RNG states (CPU, and ``device`` when it is a CUDA device) on exit.

    A health check that draws a replay sample inside this block leaves a seeded run's batches, noise and weights
    exactly as they would be without the check.

    :param device: the model's device
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with th.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def deterministic_actions(model: BaseAlgorithm, observations: Any) -> th.Tensor | None:
    """The actor's deterministic actions, scaled to [-1, 1]: TD3/DDPG's actor output, SAC/TQC/CrossQ's mean action.

    :param model: an SB3 off-policy algorithm
    :param observations: a batch of (preprocessed) observations
    :return: the actions, or None when the model has no actor (e.g. DQN)
    """
    actor = getattr(model, "actor", None)
    if actor is None:
        return None
    if hasattr(actor, "action_log_prob"):  # a squashed Gaussian: actor(obs) samples, the mean action is deterministic
        return actor(observations, deterministic=True)
    return actor(observations)


def score_critic(model: Any, n_samples: int) -> QSample | None:
    """Score the critic on a replay sample (its Q of the stored and of the actor's actions, and where cheap its one-step
    target), without disturbing training.

    The global RNG states are restored afterwards (:func:`preserved_rng`), so a seeded run draws the same batches
    and noise with or without this check. The actor's action is its deterministic one (:func:`deterministic_actions`).

    :param model: an off-policy SB3 algorithm with ``replay_buffer``, ``critic`` and ``actor`` (typed Any: TD3, SAC, TQC
        and CrossQ share these attributes but no class that declares them)
    :param n_samples: transitions to score, >= 1
    :return: the statistics, or None when the replay buffer is still empty
    """
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None or buffer.size() == 0:
        return None
    with preserved_rng(model.device), th.no_grad():
        data = buffer.sample(n_samples, env=model.get_vec_normalize_env())
        q_values = critic_values(model.critic(data.observations, data.actions))
        policy_q = critic_values(model.critic(data.observations, deterministic_actions(model, data.observations))).mean()
        target = _target_values(model, data)
        stats = [q_values.mean(), q_values.max(), q_values.abs().max(), policy_q]
        if target is not None:
            stats += [target.mean(), target.max()]
        numbers = th.stack(stats).float().cpu().tolist()
    targets: list[float | None] = numbers[4:] if target is not None else [None, None]
    return QSample(
        q_mean=numbers[0],
        q_max=numbers[1],
        q_abs_max=max(numbers[2], abs(numbers[3])),
        target_q_mean=targets[0],
        target_q_max=targets[1],
        n_updates=int(getattr(model, "_n_updates", 0)),
        policy_q_mean=numbers[3],
    )


def stats_q_sample(stats: dict[str, float]) -> QSample:
    """Build a :class:`QSample` from TD3CNN's ``last_train_stats`` (latest update; magnitude from mean and max).

    :param stats: the algorithm's ``last_train_stats`` holding ``q1_mean``, ``q_max`` and ``n_updates``, and
        ``actor_q_mean`` once the actor has been updated
    :return: the statistics
    """
    means = [stats[key] for key in ("q1_mean", "q2_mean") if key in stats]
    policy_q = stats.get("actor_q_mean")
    magnitudes = [stats["q_max"], stats.get("q_min", stats["q_max"]), *means, *([policy_q] if policy_q is not None else [])]
    return QSample(
        q_mean=float(np.mean(means)),
        q_max=stats["q_max"],
        q_abs_max=max(abs(value) for value in magnitudes),
        target_q_mean=stats.get("target_q_mean"),
        target_q_max=stats.get("target_q_max"),
        n_updates=int(stats["n_updates"]),
        policy_q_mean=policy_q,
    )


def divergence_reason(
    q_abs: float, earlier_q_abs: float | None, bound: float | None, floor: float | None, growth_factor: float | None
) -> str | None:
    """Decide whether a Q magnitude has diverged; the message carries the numbers.

    :param q_abs: the current largest |Q| (return units)
    :param earlier_q_abs: the same quantity ``growth_window`` checks ago; None until that many checks exist
    :param bound: the largest plausible |Q| (``margin * max|r| / (1 - gamma) + atol``); None disables this test
    :param floor: |Q| must exceed this for the growth test to fire; None disables the growth test
    :param growth_factor: growth over the window that counts as divergence (> 1); None disables the growth test
    :return: why it diverged, or None when it did not
    """
    if not math.isfinite(q_abs):
        return f"non-finite Q-values (max |Q| = {q_abs})"
    if bound is not None and q_abs > bound:
        return f"max |Q| = {q_abs:.4g} exceeds the bound {bound:.4g}"
    if growth_factor is None or floor is None or earlier_q_abs is None or q_abs <= floor:
        return None
    if q_abs > growth_factor * max(earlier_q_abs, 1e-12):
        return f"max |Q| = {q_abs:.4g} grew more than {growth_factor:g}x from {earlier_q_abs:.4g} while above {floor:.4g}"
    return None


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


def clip_verdict(name: str, max_norm: float | None, limit: float | None, rtol: float) -> HealthVerdict:
    """Judge the largest post-clip gradient norm of one network against its limit.

    :param name: the network, e.g. ``"actor"``
    :param max_norm: largest norm over every update (L2 over the network's parameters); None when never updated
    :param limit: the clip limit; None when there is none (the norm is then only reported, and passes)
    :param rtol: relative tolerance of the comparison, >= 0
    :return: the verdict, value = ``max_norm``, threshold = ``limit``
    """
    if max_norm is None:
        return HealthVerdict(None, None, limit, f"no {name} update was measured")
    if limit is None:
        return HealthVerdict(True, max_norm, None, f"no limit set; max {name} gradient norm {max_norm:.4g}")
    passed = math.isfinite(max_norm) and max_norm <= limit * (1 + rtol)
    relation = "within" if passed else "above"
    return HealthVerdict(passed, max_norm, limit, f"max {name} gradient norm {max_norm:.4g} {relation} {limit:g}")


def require(ok: bool, name: str, value: object, accepted: str) -> None:
    """Raise the house-style ``ValueError`` for a constructor argument unless ``ok``.

    :param ok: whether ``value`` is acceptable
    :param name: the argument's name
    :param value: the value given
    :param accepted: what is accepted, e.g. ``"a float in (0, 1)"``
    """
    if not ok:
        raise ValueError(f"{name} must be {accepted}, got {value!r}")


def is_number(value: object, low: float = -math.inf, allow_none: bool = False) -> bool:
    """Whether ``value`` is a finite real number (not a bool) strictly above ``low``, or None when allowed.

    :param value: the value to test
    :param low: exclusive lower bound
    :param allow_none: accept None
    :return: the answer
    """
    if value is None:
        return allow_none
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > low


def is_count(value: object) -> bool:
    """Whether ``value`` is an int >= 1 (not a bool).

    :param value: the value to test
    :return: the answer
    """
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def episode_infos(callback: BaseCallback) -> list[dict[str, float]]:
    """The Monitor ``info["episode"]`` dicts ({r, l, t}) of the episodes that ended at the callback's current step.

    :param callback: a callback inside ``learn()``, whose ``locals`` hold the step's ``infos``
    :return: one dict per finished episode (empty when none ended or the env has no Monitor)
    """
    return [info["episode"] for info in callback.locals.get("infos", ()) if "episode" in info]


def warn_health(message: str) -> None:
    """Emit a :class:`TrainingHealthWarning` attributed to the callback that calls this.

    :param message: the sentence, with the numbers behind it
    """
    warnings.warn(message, TrainingHealthWarning, stacklevel=2)


if TYPE_CHECKING:
    from sb3_carla_td3.callbacks.reward_trend import RewardTrendCallback as RewardTrendCallback
else:

    def __getattr__(name: str) -> Any:
        """``RewardTrendCallback``, imported on first use (an import at the top would be circular: it uses this module)."""
        if name == "RewardTrendCallback":
            from sb3_carla_td3.callbacks.reward_trend import RewardTrendCallback

            return RewardTrendCallback
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

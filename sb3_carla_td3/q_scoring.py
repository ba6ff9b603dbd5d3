"""Q-values measured from outside ``train()``: a critic scored on a replay sample (stored and actor actions, one-step
targets) without disturbing the run's RNG, TD3CNN's own Q statistics, and the divergence test applied to either."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback


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


def replay_actions(model: BaseAlgorithm, n_samples: int, min_size: int = 1) -> th.Tensor | None:
    """The actor's deterministic actions on ``n_samples`` replay observations, drawn under :func:`preserved_rng`.

    :param model: an SB3 off-policy algorithm with an actor and a replay buffer
    :param n_samples: observations to score
    :param min_size: transitions the buffer must hold first
    :return: the actions, ``(n_samples, action_dim)``, or None (no actor, no buffer, too few transitions)
    """
    buffer = getattr(model, "replay_buffer", None)
    if getattr(model, "actor", None) is None or buffer is None or buffer.size() < min_size:
        return None
    with preserved_rng(model.device), th.no_grad():
        return deterministic_actions(model, buffer.sample(n_samples).observations)


class ActorCheckCallback(BaseCallback):
    """Base of the checks that judge the actor's deterministic actions (saturation, a blind actor).

    :meth:`_actor_value` gives one measurement: with TD3CNN, its per-update statistic after each new actor update
    (``last_train_stats``, counted by ``n_actor_updates``); with other algorithms, a score of the actions on
    ``n_samples`` replay observations every ``check_freq`` steps (:func:`replay_actions`); without an actor, None and
    :attr:`not_applicable` says why.

    :param check_freq: env steps between replay checks, >= 1
    :param n_samples: replay observations scored per replay check
    :param verbose: verbosity level
    """

    def __init__(self, check_freq: int, n_samples: int, verbose: int = 0) -> None:
        super().__init__(verbose=verbose)
        self.check_freq, self.n_samples = check_freq, n_samples
        self._last_updates: float | None = None
        self.not_applicable: str | None = None

    def _applicable(self) -> bool:
        """:return: whether the model has an actor and a replay buffer (else :attr:`not_applicable` says so)"""
        if getattr(self.model, "actor", None) is None or getattr(self.model, "replay_buffer", None) is None:
            self.not_applicable = f"{type(self.model).__name__} has no actor and replay buffer to score"
            return False
        return True

    def _actor_value(self, stat: str, score: Callable[[th.Tensor], float], min_size: int = 1) -> float | None:
        """:return: ``last_train_stats[stat]`` or ``score(actions)``, or None when nothing new was measured"""
        if not self._applicable():
            return None
        stats = getattr(self.model, "last_train_stats", None)
        if stats is not None:
            if stat not in stats or stats.get("n_actor_updates") == self._last_updates:
                return None  # no actor update since the last check (policy_delay)
            self._last_updates = stats.get("n_actor_updates")
            return stats[stat]
        actions = None if self.n_calls % self.check_freq else replay_actions(self.model, self.n_samples, min_size)
        return None if actions is None else score(actions)


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

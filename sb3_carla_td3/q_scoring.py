"""Scoring from outside ``train()``: a critic and an actor measured on a replay sample (stored and actor actions,
one-step targets) without disturbing the run's RNG, as the same :class:`~sb3_carla_td3.train_stats.TrainStats` that
TD3CNN keeps, and the divergence test applied to its Q statistics."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_carla_td3.train_stats import TrainStats, action_spread, q_statistics, saturation_share


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


def score_replay(model: Any, n_samples: int, min_size: int = 1) -> TrainStats | None:
    """Measure a model's Q and actor statistics on a replay sample, without disturbing training.

    The same functions as in :meth:`TD3CNN.train() <sb3_carla_td3.td3_cnn.TD3CNN.train>` compute the record
    (:func:`~sb3_carla_td3.train_stats.q_statistics`, :func:`~sb3_carla_td3.train_stats.saturation_share`,
    :func:`~sb3_carla_td3.train_stats.action_spread`): the critic's Q of the stored actions, where cheap its one-step
    target, and the actor's deterministic actions (:func:`deterministic_actions`) with their Q1. The global RNG states
    are restored afterwards (:func:`preserved_rng`), so a seeded run draws the same batches and noise with or without
    this check.

    :param model: an off-policy SB3 algorithm with ``replay_buffer`` and ``critic`` (typed Any: TD3, SAC, TQC and
        CrossQ share these attributes but no class that declares them); without an actor the actor fields stay None
    :param n_samples: transitions to score, >= 1
    :param min_size: transitions the buffer must hold first (2 for a spread)
    :return: the statistics (``n_updates`` = the model's gradient updates so far), or None when the buffer holds fewer
        than ``min_size`` transitions or the model has no critic
    """
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None or buffer.size() < max(min_size, 1) or getattr(model, "critic", None) is None:
        return None
    with preserved_rng(model.device), th.no_grad():
        data = buffer.sample(n_samples, env=model.get_vec_normalize_env())
        q_values = critic_values(model.critic(data.observations, data.actions))
        tensors = q_statistics(q_values.split(1, dim=1), _target_values(model, data))
        actions = deterministic_actions(model, data.observations)
        if actions is not None:
            tensors["actor_q_mean"] = critic_values(model.critic(data.observations, actions))[:, 0].mean()
            tensors["actor_saturation"] = saturation_share(actions)
            tensors["actor_action_std"] = action_spread(actions)
        numbers = th.stack([t.float() for t in tensors.values()]).cpu().tolist()
    return TrainStats(n_updates=int(getattr(model, "_n_updates", 0))).updated(dict(zip(tensors, numbers, strict=True)))


def score_critic(model: Any, n_samples: int) -> QSample | None:
    """The Q statistics of a replay sample (:func:`score_replay`) as a :class:`QSample`.

    :param model: an off-policy SB3 algorithm with ``replay_buffer``, ``critic`` and ``actor``
    :param n_samples: transitions to score, >= 1
    :return: the statistics, or None when the replay buffer is still empty
    """
    stats = score_replay(model, n_samples)
    return None if stats is None else stats_q_sample(stats)


def stats_q_sample(stats: TrainStats) -> QSample:
    """Build a :class:`QSample` from a :class:`TrainStats` (magnitude from the mean, max and min).

    :param stats: a record holding ``q1_mean`` and ``q_max`` (``q2_mean``, ``q_min``, ``actor_q_mean`` and the
        target's fields count when present)
    :return: the statistics
    :raises ValueError: a record without Q statistics
    """
    if stats.q1_mean is None or stats.q_max is None:
        raise ValueError(f"the record holds no Q statistics (q1_mean={stats.q1_mean}, q_max={stats.q_max})")
    means = [value for value in (stats.q1_mean, stats.q2_mean) if value is not None]
    extremes = [value for value in (stats.q_max, stats.q_min, stats.actor_q_mean) if value is not None]
    return QSample(
        q_mean=float(np.mean(means)),
        q_max=stats.q_max,
        q_abs_max=max(abs(value) for value in [*extremes, *means]),
        target_q_mean=stats.target_q_mean,
        target_q_max=stats.target_q_max,
        n_updates=stats.n_updates,
        policy_q_mean=stats.actor_q_mean,
    )


def divergence_reason(
    q_abs: float, earlier_q_abs: float | None, bound: float | None, floor: float | None, growth_factor: float | None
) -> str | None:
    """Decide whether a Q magnitude has diverged; the message carries the numbers.

    :param q_abs: the current largest |Q| (return units)
    :param earlier_q_abs: the same quantity at a check ``growth_window_steps`` env steps earlier; None until one exists
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

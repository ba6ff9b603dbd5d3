"""The training statistics every health check, recorder and report reads: one typed record, its field names defined once.

:class:`TrainStats` is what :meth:`TD3CNN.train() <sb3_carla_td3.td3_cnn.TD3CNN.train>` keeps in ``last_train_stats``
after each call (the latest update's values), and what :func:`sb3_carla_td3.q_scoring.score_replay` measures on a
replay sample for any other SB3 off-policy algorithm (SAC, TD3, DDPG, TQC). Both go through the same functions here:
:func:`q_statistics`, :func:`saturation_share` and :func:`action_spread`. :func:`measures_itself` is the one place that
decides which of the two paths a model takes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch as th

#: |action| above this counts as saturated (actions live in [-1, 1]).
SATURATED = 0.99
#: The sides of an actor-critic update, in report order.
SIDES = ("actor", "critic")


@dataclass(frozen=True)
class TrainStats:
    """The latest values of one algorithm's training, in the units named; None where not measured.

    Losses, gradient norms and clip fractions exist only when the algorithm measures them in its own ``train()``
    (TD3CNN); a replay score (:func:`~sb3_carla_td3.q_scoring.score_replay`) fills the Q and actor statistics.
    Logged by TD3CNN under ``train/<field>`` (the mean over one ``train()`` call's updates).

    :param n_updates: gradient updates done so far (the algorithm's ``_n_updates``)
    :param n_critic_updates: critic optimizer steps taken (non-finite ones skipped); None when not counted
    :param n_actor_updates: actor optimizer steps taken; None when not counted
    :param nonfinite_skips: updates skipped for a NaN/inf loss or gradient; None when not counted
    :param seconds_per_update: wall-clock seconds per gradient step of the latest ``train()`` call
    :param critic_loss: the critic loss (sum over the critics' MSE)
    :param critic_cnn_grad_norm_pre: L2 norm of the critic encoder's gradient before clipping
    :param critic_head_grad_norm_pre: L2 norm of the critic heads' gradient before clipping
    :param critic_grad_norm_pre: global L2 norm of every critic gradient before clipping
    :param critic_grad_norm_post: the same after clipping (what the optimizer stepped)
    :param critic_grad_norm_post_max: the largest post-clip norm of the latest ``train()`` call
    :param critic_clip_fraction: share of the latest call's critic updates that were clipped, in [0, 1]
    :param q1_mean: mean Q of the first critic on the sample's stored actions (return units)
    :param q2_mean: the same for the second critic; None with one critic
    :param q_max: largest Q over critics and sample
    :param q_min: smallest Q over critics and sample
    :param target_q_mean: mean one-step target r + gamma (1 - d) min Q_target(s', a'); None where not formed (TQC)
    :param target_q_max: largest target
    :param actor_loss: the actor loss (with its pre-tanh penalty)
    :param actor_cnn_grad_norm_pre: L2 norm of the actor encoder's gradient before clipping
    :param actor_head_grad_norm_pre: L2 norm of the actor head's gradient before clipping
    :param actor_grad_norm_pre: global L2 norm of every actor gradient before clipping
    :param actor_grad_norm_post: the same after clipping
    :param actor_grad_norm_post_max: the largest post-clip norm of the latest ``train()`` call
    :param actor_clip_fraction: share of the latest call's actor updates that were clipped, in [0, 1]
    :param actor_q_mean: mean Q1 of the actor's own actions, Q(s, pi(s)), the value the actor maximises
    :param actor_saturation: share of the actor's action entries with |a| > :data:`SATURATED`, in [0, 1]
    :param actor_preact_sq: mean squared pre-tanh output of the actor
    :param actor_action_std: spread of the actor's actions over the sample (:func:`action_spread`)
    """

    n_updates: int = 0
    n_critic_updates: int | None = None
    n_actor_updates: int | None = None
    nonfinite_skips: int | None = None
    seconds_per_update: float | None = None
    critic_loss: float | None = None
    critic_cnn_grad_norm_pre: float | None = None
    critic_head_grad_norm_pre: float | None = None
    critic_grad_norm_pre: float | None = None
    critic_grad_norm_post: float | None = None
    critic_grad_norm_post_max: float | None = None
    critic_clip_fraction: float | None = None
    q1_mean: float | None = None
    q2_mean: float | None = None
    q_max: float | None = None
    q_min: float | None = None
    target_q_mean: float | None = None
    target_q_max: float | None = None
    actor_loss: float | None = None
    actor_cnn_grad_norm_pre: float | None = None
    actor_head_grad_norm_pre: float | None = None
    actor_grad_norm_pre: float | None = None
    actor_grad_norm_post: float | None = None
    actor_grad_norm_post_max: float | None = None
    actor_clip_fraction: float | None = None
    actor_q_mean: float | None = None
    actor_saturation: float | None = None
    actor_preact_sq: float | None = None
    actor_action_std: float | None = None

    def updated(self, values: Mapping[str, float]) -> TrainStats:
        """A copy with ``values`` replacing the fields they name (counts are rounded to ints).

        :param values: field name -> value
        :return: the new record
        :raises TypeError: a name that is not a field
        """
        unknown = sorted(set(values) - FIELDS)
        if unknown:
            raise TypeError(f"{unknown} are not TrainStats fields; the fields are {sorted(FIELDS)}")
        return dataclasses.replace(self, **{name: _typed(name, value) for name, value in values.items()})

    def record(self) -> dict[str, float]:
        """The measured fields as floats, None ones left out (what :class:`~sb3_carla_td3.validation.recorder.
        MetricsRecorder` writes to a run's metrics.json).

        :return: field name -> value
        """
        return {f.name: float(v) for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], ignore: Sequence[str] = ("timestep",)) -> TrainStats:
        """Read back what :meth:`record` wrote (or a 0.1.0 checkpoint's ``last_train_stats`` dict).

        :param record: field name -> value
        :param ignore: keys that are not fields and are skipped (the recorder's ``timestep``)
        :return: the record
        :raises TypeError: a key that is neither a field nor ignored
        """
        return cls().updated({key: value for key, value in record.items() if key not in ignore})

    def side(self, side: str, name: str) -> float | None:
        """One side's value, e.g. ``side("actor", "grad_norm_post")`` is :attr:`actor_grad_norm_post`.

        :param side: "actor" or "critic"
        :param name: the field name without the side prefix
        :return: the value (None when not measured)
        """
        return getattr(self, side_field(side, name))


#: Every field name of :class:`TrainStats`.
FIELDS = frozenset(f.name for f in dataclasses.fields(TrainStats))
_COUNTS = frozenset({"n_updates", "n_critic_updates", "n_actor_updates", "nonfinite_skips"})


def _typed(name: str, value: Any) -> Any:
    return None if value is None else int(value) if name in _COUNTS else float(value)


def side_field(side: str, name: str) -> str:
    """The field name of one side's value, checked: ``side_field("critic", "loss") == "critic_loss"``.

    :param side: "actor" or "critic"
    :param name: the name without the side prefix
    :return: the field name
    :raises KeyError: no such field
    """
    field = f"{side}_{name}"
    if side not in SIDES or field not in FIELDS:
        raise KeyError(f"TrainStats has no field {field!r} (side must be one of {SIDES})")
    return field


def measures_itself(model: object) -> bool:
    """Whether ``model`` keeps its own :class:`TrainStats` in ``last_train_stats`` after every ``train()`` call.

    The one place that decides between the algorithm's own statistics (TD3CNN: read after each update, free) and a
    replay score every ``check_freq`` env steps (any other SB3 algorithm).

    :param model: an SB3 algorithm
    :return: the answer (its class declares ``measures_train_stats = True``)
    """
    return getattr(type(model), "measures_train_stats", False) is True


def latest_train_stats(model: object) -> TrainStats | None:
    """The statistics ``model`` measured in its latest ``train()`` call.

    :param model: an SB3 algorithm
    :return: its record; None before its first ``train()`` call or when it does not measure itself
    """
    return getattr(model, "last_train_stats", None) if measures_itself(model) else None


def saturation_share(actions: th.Tensor) -> th.Tensor:
    """Share of action entries with ``|a| > SATURATED`` (a tanh actor there has ~0 gradient).

    :param actions: a batch of actions scaled to [-1, 1]
    :return: a 0-d tensor in [0, 1], on the actions' device (read it with ``float()``)
    """
    return (actions.detach().abs() > SATURATED).float().mean()


def action_spread(actions: th.Tensor) -> th.Tensor:
    """How much the actions of a batch of observations differ: the largest per-dimension standard deviation.

    One dimension that follows the observation (steering, say) is enough for an actor to see; 0 means every
    observation got the same action.

    :param actions: a batch of actions, ``(batch, action_dim)``, scaled to [-1, 1]
    :return: a 0-d tensor ``max_j std_i actions[i, j]`` (population std: 0.0 for a batch of one)
    """
    return actions.detach().float().std(dim=0, correction=0).max()


def q_statistics(current_q: Sequence[th.Tensor], target_q: th.Tensor | None) -> dict[str, th.Tensor]:
    """The Q statistics of one batch, as 0-d tensors keyed by :class:`TrainStats` field (read in one host sync).

    :param current_q: each critic's Q(s, a) on the batch, ``(batch, 1)`` each
    :param target_q: the one-step target, ``(batch, 1)``; None when not formed
    :return: ``q1_mean`` (and ``q2_mean``), ``q_max``, ``q_min``, and ``target_q_mean``, ``target_q_max`` with a target
    """
    all_q = th.cat(tuple(current_q), dim=1).detach()
    stats = {"q1_mean": current_q[0].mean(), "q_max": all_q.max(), "q_min": all_q.min()}
    if target_q is not None:
        stats |= {"target_q_mean": target_q.mean(), "target_q_max": target_q.max()}
    if len(current_q) > 1:
        stats["q2_mean"] = current_q[1].mean()
    return stats

"""Measurements and judgements behind the training-health callbacks: verdicts, stopping with a checkpoint, gradient
norms, the return trend, argument checks.

Everything here works on any SB3 off-policy algorithm (TD3, DDPG, SAC, sb3-contrib's TQC) without touching its
``train()``: gradient norms come from ``torch.optim.Optimizer.register_step_pre_hook``, Q-values from scoring the
critic on a replay sample (:mod:`sb3_carla_td3.q_scoring`, re-exported here), episode statistics from Monitor's
``info["episode"]``. The callbacks themselves live in :mod:`sb3_carla_td3.callbacks`; ``RewardTrendCallback`` stays
importable from here, where it used to live.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

# Q scoring lives in its own module; its names stay importable from here, where the callbacks and tests find them.
from sb3_carla_td3.q_scoring import QSample as QSample
from sb3_carla_td3.q_scoring import critic_values as critic_values
from sb3_carla_td3.q_scoring import deterministic_actions as deterministic_actions
from sb3_carla_td3.q_scoring import divergence_reason as divergence_reason
from sb3_carla_td3.q_scoring import preserved_rng as preserved_rng
from sb3_carla_td3.q_scoring import score_critic as score_critic
from sb3_carla_td3.q_scoring import stats_q_sample as stats_q_sample

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

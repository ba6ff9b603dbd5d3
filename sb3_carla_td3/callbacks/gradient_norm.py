"""Gradient norms: the global L2 norm of every actor and critic update, checked against its clip limit.

With plain SB3 the norms come from a step pre-hook on each optimizer (:class:`StepNormRecorder`), without touching
the algorithm's ``train()``; TD3CNN measures them itself (:class:`~sb3_carla_td3.train_stats.TrainStats`).
"""

from __future__ import annotations

import math
import os
from functools import partial
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from sb3_carla_td3.callbacks.utils import is_number, require
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, keep_training, warn_health
from sb3_carla_td3.train_stats import SIDES, latest_train_stats, measures_itself

#: The networks whose optimizers the gradient monitor watches, in report order.
ROLES = SIDES


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


def clip_verdict(name: str, max_norm: float | None, limit: float | None, rtol: float) -> HealthVerdict:
    """Judge the largest post-clip gradient norm of one network against its limit.

    :param name: the network, e.g. ``"actor"``
    :param max_norm: largest norm over every update (L2 over the network's parameters); None when never updated
    :param limit: the clip limit; None when there is none (the check cannot fail: N/A, with the norm reported)
    :param rtol: relative tolerance of the comparison, >= 0
    :return: the verdict, value = ``max_norm``, threshold = ``limit``
    """
    if max_norm is None:
        return HealthVerdict(None, None, limit, f"no {name} update was measured")
    if limit is None:
        detail = f"no clip limit to check against (max {name} gradient norm {max_norm:.4g}); set {name}_max_norm to judge it"
        return HealthVerdict(None, max_norm, None, detail, applies=False)
    passed = math.isfinite(max_norm) and max_norm <= limit * (1 + rtol)
    relation = "within" if passed else "above"
    return HealthVerdict(passed, max_norm, limit, f"max {name} gradient norm {max_norm:.4g} {relation} {limit:g}")


class GradientNormCallback(BaseCallback):
    """Log the global L2 gradient norm of every actor and critic update and check it against a clip limit.

    Plain SB3: a step pre-hook on each optimizer measures exactly the gradients that step consumes (after any
    clipping); ``health/<net>_grad_norm`` is the mean and ``health/<net>_grad_norm_max`` the max over the updates of
    the last ``train()`` call. TD3CNN: its :class:`~sb3_carla_td3.train_stats.TrainStats` give the latest post-clip
    norm, the call's max, the
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
        self._uses_stats = measures_itself(self.model)
        self._optimizers = {} if self._uses_stats else find_optimizers(self.model)
        missing = [role for role in ROLES if not self._uses_stats and role not in self._optimizers]
        if missing:
            warn_health(f"{type(self).__name__}: no optimizer found for {missing} on {type(self.model).__name__}")

    def _on_training_start(self) -> None:
        if self._uses_stats:
            stats = latest_train_stats(self.model)
            self._stats_updates = None if stats is None else stats.n_updates
        else:
            self._recorder = StepNormRecorder(self._optimizers)

    def _read_norms(self) -> dict[str, list[float]]:
        """New norms per network since the last read; with TD3CNN also logs its pre-clip norm and clip fraction."""
        if self._recorder is not None:
            return {role: self._recorder.pop(role) for role in self._optimizers}
        stats = latest_train_stats(self.model) if self._uses_stats else None
        if stats is None or stats.n_updates == self._stats_updates:
            return {}
        self._stats_updates = stats.n_updates
        norms: dict[str, list[float]] = {}
        for role in ROLES:
            for name in ("grad_norm_pre", "clip_fraction"):
                value = stats.side(role, name)
                if value is not None:
                    self.logger.record(f"health/{role}_{name}", value)
            post, post_max = stats.side(role, "grad_norm_post"), stats.side(role, "grad_norm_post_max")
            if post is not None and post_max is not None:
                norms[role] = [post, post_max]
        return norms

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

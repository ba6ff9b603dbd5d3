"""Gradient math: global L2 norms, joint clipping with verification, and the optimizer-coverage audit.

The system this library replaces reported "clipping failures" (actor CNN 2.42 > 1.0) because its after-clip
metric added per-tensor norms, ``sum_i ||g_i||``, instead of taking the global norm ``sqrt(sum_i ||g_i||^2)`` that
:func:`torch.nn.utils.clip_grad_norm_` bounds. Everything here measures the global norm of exactly the gradients
an optimizer is about to step, and :func:`sum_of_norms` keeps the mistaken metric only so tests can show the
difference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch as th
from torch import nn

from sb3_carla_td3.errors import GradientClipError, OptimizerCoverageError

#: Relative slack allowed between the measured post-clip norm and ``max_norm`` (clip_grad_norm_ adds 1e-6).
CLIP_TOLERANCE = 1e-4
CLIP_CHECKS = ("raise", "warn", "off")


def grad_norm(params: Iterable[nn.Parameter], device: th.device | str = "cpu") -> th.Tensor:
    """Global L2 norm ``sqrt(sum_i ||g_i||^2)`` of the gradients of ``params`` (parameters without grad are skipped).

    :param params: parameters whose ``.grad`` to measure
    :param device: where to put the zero returned when no parameter has a gradient
    :return: a 0-d tensor on the gradients' device (0 when no parameter has a gradient); no host sync
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return th.zeros((), device=device)
    return nn.utils.get_total_norm(grads, norm_type=2.0)


def sum_of_norms(params: Iterable[nn.Parameter]) -> th.Tensor:
    """The original system's mistaken "after-clip" metric, ``sum_i ||g_i||``. Never use it to check clipping.

    It is at least the global norm and up to ``sqrt(n_tensors)`` times larger, so a correctly clipped
    gradient reads as a clipping failure. Kept for tests and documentation.

    :param params: parameters whose ``.grad`` to measure
    :return: a 0-d tensor
    """
    norms = [p.grad.norm(2) for p in params if p.grad is not None]
    return th.stack(norms).sum() if norms else th.zeros(())


@dataclass
class OptimizedParams:
    """The parameters one optimizer steps, split into the encoder (CNN/RNN) part and the head (MLP) part.

    :param name: "actor" or "critic", used in messages and logger keys
    :param encoder: stepped parameters that belong to the features extractor
    :param head: the other stepped parameters (actor mu, critic q-networks)
    """

    name: str
    encoder: list[nn.Parameter]
    head: list[nn.Parameter]

    @classmethod
    def from_optimizer(cls, name: str, optimizer: th.optim.Optimizer, encoder: nn.Module | None) -> OptimizedParams:
        """Read the parameter list from the optimizer itself, so the norm covers exactly what ``step()`` consumes.

        :param name: "actor" or "critic"
        :param optimizer: the optimizer whose parameters to split
        :param encoder: the features extractor whose parameters count as the encoder part (None: no encoder part)
        :return: the split parameter lists
        """
        encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
        stepped = [p for group in optimizer.param_groups for p in group["params"]]
        return cls(
            name=name,
            encoder=[p for p in stepped if id(p) in encoder_ids],
            head=[p for p in stepped if id(p) not in encoder_ids],
        )

    @property
    def all(self) -> list[nn.Parameter]:
        """Every stepped parameter, encoder first."""
        return self.encoder + self.head


@dataclass
class PreClipNorms:
    """Gradient norms of one update before clipping, as 0-d tensors (read them together with one ``.tolist()``).

    :param encoder: global norm of the encoder part
    :param head: global norm of the head part
    :param total: global norm of everything the optimizer steps, ``sqrt(encoder^2 + head^2)``
    """

    encoder: th.Tensor
    head: th.Tensor
    total: th.Tensor


def measure_gradients(params: OptimizedParams) -> PreClipNorms:
    """Global L2 norms of the encoder part, the head part and both, in one pass over the gradients (no host sync).

    :param params: the parameters one optimizer steps
    :return: the pre-clip norms
    """
    device = params.all[0].device if params.all else "cpu"
    encoder, head = grad_norm(params.encoder, device), grad_norm(params.head, device)
    return PreClipNorms(encoder=encoder, head=head, total=th.sqrt(encoder.square() + head.square()))


def clip_to_norm(params: OptimizedParams, max_norm: float, total_norm: th.Tensor) -> float:
    """Scale the gradients of ``params`` jointly so that their global L2 norm is ``max_norm``, then measure it again.

    Call it only when ``total_norm > max_norm``: below the limit the gradients are left untouched and the post-clip
    norm equals the pre-clip one, so no pass over the gradients is spent on them.

    :param params: the parameters one optimizer steps (encoder and head together: one joint clip)
    :param max_norm: the L2 norm limit
    :param total_norm: their global norm before clipping, from :func:`measure_gradients`
    :return: the global norm measured from the clipped gradients (not assumed)
    """
    grads_present = [p for p in params.all if p.grad is not None]
    nn.utils.clip_grads_with_norm_(grads_present, max_norm, total_norm)
    return float(grad_norm(grads_present, total_norm.device))


def check_clip(name: str, post_norm: float, max_norm: float | None, check: str) -> None:
    """Verify that a clipped gradient really has global norm ``<= max_norm * (1 + CLIP_TOLERANCE)``.

    :param name: "actor" or "critic", for the message
    :param post_norm: the global norm measured after clipping
    :param max_norm: the limit (None: nothing to check)
    :param check: "raise" (GradientClipError), "warn" (RuntimeWarning) or "off"
    """
    if max_norm is None or check == "off" or post_norm <= max_norm * (1.0 + CLIP_TOLERANCE):
        return
    message = (
        f"{name} gradient clipping failed: global L2 norm after clipping is {post_norm:.6g}, "
        f"above the limit {name}_grad_clip={max_norm:g}. The optimizer step was not taken."
    )
    if check == "raise":
        raise GradientClipError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def all_finite(values: Sequence[float]) -> bool:
    """Whether every value is finite (neither NaN nor +-inf)."""
    return all(math.isfinite(v) for v in values)


def _reachable_optimizers(roots: Mapping[str, Any]) -> dict[int, tuple[str, th.optim.Optimizer]]:
    """Find every optimizer stored as an attribute of the roots or of any submodule of an ``nn.Module`` root."""
    found: dict[int, tuple[str, th.optim.Optimizer]] = {}
    for root_name, root in roots.items():
        objects: list[tuple[str, Any]] = [(root_name, root)]
        if isinstance(root, nn.Module):
            objects += [(f"{root_name}.{name}" if name else root_name, module) for name, module in root.named_modules()]
        for owner_name, owner in objects:
            for attr, value in vars(owner).items():
                if isinstance(value, th.optim.Optimizer) and id(value) not in found:
                    found[id(value)] = (f"{owner_name}.{attr}", value)
    return found


def audit_optimizers(
    expected: Mapping[str, tuple[th.optim.Optimizer, list[nn.Parameter]]],
    named_parameters: Mapping[int, str],
    roots: Mapping[str, Any],
) -> None:
    """Check that each optimizer steps exactly its own parameters, once, and that no other optimizer exists.

    :param expected: per side ("actor", "critic"): the optimizer and the trainable parameters it must step
    :param named_parameters: ``id(parameter) -> qualified name`` for messages
    :param roots: objects to scan for stray optimizers (the algorithm, its policy); modules are scanned recursively
    :raises OptimizerCoverageError: naming the missing, duplicated, foreign or extra parameters and optimizers
    """
    problems: list[str] = []

    def names(params: Iterable[nn.Parameter]) -> str:
        listed = [named_parameters.get(id(p), f"<unnamed {tuple(p.shape)}>") for p in params]
        return ", ".join(listed[:8]) + (f" (+{len(listed) - 8} more)" if len(listed) > 8 else "")

    owner_of: dict[int, str] = {}
    for side, (optimizer, params) in expected.items():
        stepped = [p for group in optimizer.param_groups for p in group["params"]]
        stepped_ids = [id(p) for p in stepped]
        missing = [p for p in params if p.requires_grad and id(p) not in stepped_ids]
        if missing:
            problems.append(f"{side} optimizer does not step {len(missing)} trainable {side} parameter(s): {names(missing)}")
        repeated = [p for p in stepped if stepped_ids.count(id(p)) > 1]
        if repeated:
            problems.append(f"{side} optimizer holds parameter(s) more than once: {names(repeated)}")
        own_ids = {id(p) for p in params}
        foreign = [p for p in stepped if id(p) not in own_ids]
        if foreign:
            problems.append(f"{side} optimizer steps parameter(s) that are not {side} parameters: {names(foreign)}")
        for p in stepped:
            other = owner_of.setdefault(id(p), side)
            if other != side:
                problems.append(f"parameter {names([p])} is stepped by both the {other} and the {side} optimizer")

    known = {id(optimizer) for optimizer, _ in expected.values()}
    extra = [path for key, (path, _) in _reachable_optimizers(roots).items() if key not in known]
    if extra:
        problems.append(f"unexpected optimizer(s) {', '.join(sorted(extra))}: only the actor and critic optimizers may step")
    if problems:
        raise OptimizerCoverageError("Optimizer audit failed:\n- " + "\n- ".join(problems))

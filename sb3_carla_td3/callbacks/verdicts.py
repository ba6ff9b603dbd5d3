"""What a health check concludes: its verdict, its warning, and stopping training with a checkpoint."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm


class TrainingHealthWarning(UserWarning):
    """A training-health check failed (gradient limit, Q divergence, episode collapse or degrading returns)."""


@dataclass(frozen=True)
class HealthVerdict:
    """The outcome of one health criterion at the end of (or during) training.

    :param passed: True (healthy), False (the criterion failed) or None (N/A: not enough data, or it cannot apply)
    :param value: the measured quantity, in the criterion's own unit; None when nothing was measured
    :param threshold: the limit ``value`` is judged against; None when no limit applies
    :param detail: one sentence with the numbers behind the outcome
    :param applies: False when the criterion cannot apply to this model or env (no conv layer, no actor, no clip
        limit): an N/A that leaves a run's verdict alone, where an N/A for want of data makes it INCONCLUSIVE
    """

    passed: bool | None
    value: float | None
    threshold: float | None
    detail: str
    applies: bool = True

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


def warn_health(message: str) -> None:
    """Emit a :class:`TrainingHealthWarning` attributed to the callback that calls this.

    :param message: the sentence, with the numbers behind it
    """
    warnings.warn(message, TrainingHealthWarning, stacklevel=2)


def save_before_stop(model: BaseAlgorithm, path: str | os.PathLike[str]) -> Path:
    """Save ``model`` as one file before a health check stops training, creating the parent folder (a run's atomic
    checkpoint directories are :func:`sb3_carla_td3.validation.checkpoints.save_checkpoint`'s).

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
        save_before_stop(model, checkpoint_path)
    return not stop

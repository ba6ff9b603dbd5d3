"""Atomic checkpoints: a checkpoint is written to a temporary file and renamed, so it is never left half-written."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

LATEST = "latest.json"


def save_checkpoint(
    model: BaseAlgorithm,
    directory: str | Path,
    save_replay_buffer: bool = False,
    health_state: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` (and optionally its replay buffer and health-check state) atomically, then point
    ``latest.json`` at it.

    :param model: the algorithm to save
    :param directory: the checkpoint directory
    :param save_replay_buffer: also save the replay buffer (off-policy algorithms only)
    :param health_state: :meth:`TrainingHealthCallback.state_dict`, pickled beside the model (None: not saved)
    :return: the model file written
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = f"model_{model.num_timesteps}_steps"
    model_path = directory / f"{name}.zip"
    tmp = directory / f".{name}.tmp.zip"
    model.save(tmp)
    os.replace(tmp, model_path)
    record: dict[str, Any] = {"model": model_path.name, "timesteps": model.num_timesteps, "replay_buffer": None}
    if save_replay_buffer and isinstance(model, OffPolicyAlgorithm):
        buffer_path = directory / f"{name}_replay_buffer.pkl"
        tmp_buffer = directory / f".{name}_replay_buffer.tmp.pkl"
        model.save_replay_buffer(tmp_buffer)
        os.replace(tmp_buffer, buffer_path)
        record["replay_buffer"] = buffer_path.name
    record["health"] = None
    if health_state is not None:
        health_path = directory / f"{name}_health.pkl"
        tmp_health = directory / f".{name}_health.tmp.pkl"
        tmp_health.write_bytes(pickle.dumps(health_state))
        os.replace(tmp_health, health_path)
        record["health"] = health_path.name
    tmp_latest = directory / f".{LATEST}.tmp"
    tmp_latest.write_text(json.dumps(record))
    os.replace(tmp_latest, directory / LATEST)
    return model_path


def latest_checkpoint(directory: str | Path) -> dict[str, Any] | None:
    """The record of the newest complete checkpoint in ``directory``, with absolute paths, or None.

    :param directory: the checkpoint directory
    :return: ``{"model": Path, "timesteps": int, "replay_buffer": Path | None, "health": Path | None}`` or None
    """
    directory = Path(directory)
    latest = directory / LATEST
    if not latest.exists():
        return None
    record = json.loads(latest.read_text())
    record["model"] = directory / record["model"]
    record["replay_buffer"] = directory / record["replay_buffer"] if record["replay_buffer"] else None
    record["health"] = directory / record["health"] if record.get("health") else None
    return record


def load_health_state(record: dict[str, Any]) -> dict[str, Any] | None:
    """:return: the health-check state saved with a checkpoint record of :func:`latest_checkpoint`, or None"""
    path = record.get("health")
    return None if path is None else pickle.loads(Path(path).read_bytes())


class AtomicCheckpointCallback(BaseCallback):
    """Save an atomic checkpoint every ``save_freq`` environment steps.

    :param save_freq: env steps (summed over envs) between checkpoints, >= 1
    :param directory: where checkpoints go
    :param save_replay_buffer: also save the replay buffer with each checkpoint
    :param health_state: called at each checkpoint for the health checks' state to save with it
        (``TrainingHealthCallback.state_dict``); None saves none
    :param verbose: 1 prints each checkpoint path
    """

    def __init__(
        self,
        save_freq: int,
        directory: str | Path,
        save_replay_buffer: bool = False,
        health_state: Callable[[], dict[str, Any]] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        if save_freq < 1:
            raise ValueError(f"save_freq must be >= 1 env steps, got {save_freq!r}")
        self.save_freq, self.directory, self.save_replay_buffer = save_freq, Path(directory), save_replay_buffer
        self.health_state = health_state
        self._next = save_freq

    def _init_callback(self) -> None:
        self._next = (self.model.num_timesteps // self.save_freq + 1) * self.save_freq

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        # After the rollout's transitions are stored (on_step runs before the store), so that the saved buffer
        # holds every counted timestep; before train(), which the resumed run then performs.
        if self.num_timesteps >= self._next:
            state = None if self.health_state is None else self.health_state()
            path = save_checkpoint(self.model, self.directory, self.save_replay_buffer, state)
            self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq
            if self.verbose >= 1:
                print(f"checkpoint: {path}")

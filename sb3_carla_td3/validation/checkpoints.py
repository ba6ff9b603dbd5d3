"""Atomic checkpoints (written to a temporary file and renamed, never left half-written), and runs that resume from
them and save one on Ctrl-C or SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterator
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
    keep_last: int | None = None,
) -> Path:
    """Save ``model`` (and optionally its replay buffer and health-check state) atomically, then point
    ``latest.json`` at it.

    :param model: the algorithm to save
    :param directory: the checkpoint directory
    :param save_replay_buffer: also save the replay buffer (off-policy algorithms only)
    :param health_state: :meth:`TrainingHealthCallback.state_dict`, pickled beside the model (None: not saved)
    :param keep_last: then delete all but the newest ``keep_last`` checkpoints (None: keep all). SB3 saves a replay
        buffer whole, its unused part too: a 1M-transition buffer of 40x40 frames takes 1.6 GB per checkpoint
    :return: the model file written
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last!r}")
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
    if keep_last is not None:
        found = (_steps_of(p) for p in directory.glob("model_*_steps*"))
        steps = sorted({n for n in found if n is not None}, reverse=True)
        for old in steps[keep_last:]:
            for path in directory.glob(f"model_{old}_steps*"):
                path.unlink(missing_ok=True)
    return model_path


def _steps_of(path: Path) -> int | None:
    """:return: the timestep count in a checkpoint file name ``model_<steps>_steps...``, or None"""
    parts = path.name.split("_")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() and parts[2].startswith("steps") else None


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
    :param keep_last: keep only the newest ``keep_last`` checkpoints (None: all); see :func:`save_checkpoint`
    :param verbose: 1 prints each checkpoint path
    """

    def __init__(
        self,
        save_freq: int,
        directory: str | Path,
        save_replay_buffer: bool = False,
        health_state: Callable[[], dict[str, Any]] | None = None,
        verbose: int = 0,
        keep_last: int | None = None,
    ) -> None:
        super().__init__(verbose=verbose)
        if save_freq < 1:
            raise ValueError(f"save_freq must be >= 1 env steps, got {save_freq!r}")
        self.save_freq, self.directory, self.save_replay_buffer = save_freq, Path(directory), save_replay_buffer
        self.health_state, self.keep_last = health_state, keep_last
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
            path = save_checkpoint(self.model, self.directory, self.save_replay_buffer, state, self.keep_last)
            self._next = (self.num_timesteps // self.save_freq + 1) * self.save_freq
            if self.verbose >= 1:
                print(f"checkpoint: {path}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM (``kill``, a batch scheduler's stop, a container stop) acts like Ctrl-C.

    :func:`train` then saves a checkpoint and the report as for Ctrl-C instead of dying with nothing saved. Only the
    main thread can handle signals: elsewhere the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def learn_resumably(
    build: Callable[[], OffPolicyAlgorithm],
    load: Callable[[Path], OffPolicyAlgorithm],
    total_timesteps: int,
    directory: str | Path,
    save_freq: int,
    callbacks: list[BaseCallback],
    report_path: str | Path | None = None,
) -> tuple[OffPolicyAlgorithm, str]:
    """Learn up to ``total_timesteps``, continuing from the newest checkpoint in ``directory`` when there is one.

    Checkpoints (model and replay buffer, the newest only) every ``save_freq`` env steps and at the end; Ctrl-C or
    SIGTERM saves one before returning. Running the same call again continues the run. With ``report_path``, a
    ``report.json`` of the shape phase 3 writes (``data.summary``: ``status``, ``timesteps``, ``session_timesteps``,
    ``seconds``; verdict "example") tells ``examples/learning_results.py`` whether the run is done and how fast it
    went.

    :param build: makes a new model (no checkpoint yet)
    :param load: loads the model of a checkpoint file (with the env attached)
    :param total_timesteps: the run's budget in env steps, over every sitting
    :param directory: the checkpoint directory
    :param save_freq: env steps between checkpoints
    :param callbacks: the run's other callbacks (evaluation, monitoring)
    :param report_path: where to write the run's summary (None: nowhere)
    :return: the model and the status, "completed" or "interrupted"
    """
    started = time.perf_counter()
    checkpoint = latest_checkpoint(directory)
    if checkpoint is None:
        model = build()
    else:
        model = load(checkpoint["model"])
        if checkpoint["replay_buffer"] is not None:
            model.load_replay_buffer(checkpoint["replay_buffer"])
        print(f"resumed from {checkpoint['model']} ({model.num_timesteps:,} steps)", flush=True)
    saver = AtomicCheckpointCallback(save_freq, directory, save_replay_buffer=True, keep_last=1)
    status = "completed"
    try:
        with terminate_as_interrupt():
            remaining = max(total_timesteps - model.num_timesteps, 0)
            model.learn(remaining, callback=[*callbacks, saver], reset_num_timesteps=checkpoint is None)
    except KeyboardInterrupt:
        status = "interrupted"
    newest = latest_checkpoint(directory)
    if newest is None or newest["timesteps"] != model.num_timesteps:
        save_checkpoint(model, directory, save_replay_buffer=True, keep_last=1)
    if report_path is not None:
        first = 0 if checkpoint is None else checkpoint["timesteps"]
        summary = {"status": status, "timesteps": model.num_timesteps, "session_timesteps": model.num_timesteps - first}
        summary["seconds"] = time.perf_counter() - started
        Path(report_path).write_text(json.dumps({"verdict": "example", "data": {"summary": summary}}, indent=1))
    return model, status

"""Tests for the evidence scripts in examples/: the original wiring is caught, the results helpers compute right."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from sb3_carla_td3 import TD3CNN
from sb3_carla_td3.callbacks import QValueCallback
from sb3_carla_td3.health import TrainingHealthWarning
from sb3_carla_td3.validation.recorder import MetricsRecorder
from tests.conftest import TINY_ENCODER, make_image_env

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_with_q_monitor(model_class: type[TD3CNN], steps: int = 300) -> tuple[TD3CNN, QValueCallback, MetricsRecorder]:
    """Separate encoders, one lr for both sides, on a random-pixel env whose true Q is 0 everywhere."""
    model = model_class(
        "CnnPolicy",
        make_image_env(),
        encoder="separate",
        learning_rate=1e-3,
        buffer_size=400,
        learning_starts=32,
        batch_size=16,
        policy_kwargs={"net_arch": [32], "features_extractor_kwargs": dict(TINY_ENCODER)},
        seed=0,
        device="cpu",
    )
    monitor, recorder = QValueCallback(check_freq=10), MetricsRecorder()
    model.learn(steps, callback=[monitor, recorder])
    return model, monitor, recorder


def test_the_original_wiring_inflates_only_the_policy_q_and_the_monitor_flags_it() -> None:
    reproduction = load_example("reproduce_original_failure")
    with pytest.warns(TrainingHealthWarning, match="Q divergence"):
        _, monitor, recorder = train_with_q_monitor(reproduction.MiswiredTD3)
    assert monitor.diverged_at_update is not None
    bound = monitor.verdict().threshold
    replay_q = max(max(abs(u["q_max"]), abs(u["q_min"])) for u in recorder.updates)
    policy_q = max(abs(u["actor_q_mean"]) for u in recorder.updates if "actor_q_mean" in u)
    # The documented paradox: the critic's Q on replay actions stays small, Q1 on the actor's own features does not.
    assert replay_q < bound < policy_q


def test_td3cnn_with_the_same_settings_stays_inside_the_bound() -> None:
    _, monitor, recorder = train_with_q_monitor(TD3CNN)
    assert monitor.diverged_at_update is None
    assert monitor.verdict().passed
    assert max(abs(u["actor_q_mean"]) for u in recorder.updates if "actor_q_mean" in u) < monitor.verdict().threshold


def test_return_trend_fits_a_line_after_learning_starts() -> None:
    results = load_example("carracing_results")
    episodes: list[dict[str, Any]] = [{"timestep": 100.0 * k, "return": 5.0 + 2.0 * k} for k in range(30)]
    slope, first, last = results.return_trend(episodes, after=1000.0)
    assert slope == pytest.approx(20.0)  # 2 per episode, one episode per 100 steps
    kept = [e["return"] for e in episodes if e["timestep"] > 1000.0]
    assert first == pytest.approx(np.mean(kept[:6])) and last == pytest.approx(np.mean(kept[-6:]))
    assert np.isnan(results.return_trend(episodes[:12], after=1000.0)[0])  # fewer than 3 episodes after the start


def test_binned_means_leave_empty_bins_nan() -> None:
    results = load_example("carracing_results")
    means = results._binned([(1.0, 2.0), (2.0, 4.0), (9.0, 10.0)], np.array([0.0, 5.0, 7.0, 10.0]))
    assert means[0] == 3.0 and np.isnan(means[1]) and means[2] == 10.0

"""A short seeded TD3CNN run gives the same weights, logged ``train/*`` values and RNG states as the recorded ones.

The monitoring layer reads what ``train()`` measures and scores replay samples under
:func:`~sb3_carla_td3.q_scoring.preserved_rng`; neither may change a run. The golden values in
``tests/data/training_golden.json`` were recorded before the statistics record (issue 23) replaced the string-keyed
dict, on torch 2.13.0 (CPU). Regenerate them only for a change that is meant to change training:
``python tests/test_training_unchanged.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import make_image_env, make_model

from sb3_carla_td3.callbacks import TrainingHealthCallback
from sb3_carla_td3.validation.recorder import MetricsRecorder

GOLDEN = Path(__file__).resolve().parent / "data" / "training_golden.json"
CASES = {
    "separate": {"encoder": "separate", "augment": None},  # the settings the golden run was recorded with
    "shared_shift": {"encoder": "shared", "augment": "shift"},
}


class TrainLog(BaseCallback):
    """Keeps every ``train/*`` value the logger holds after each step (the logger never dumps in so short a run)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, float]] = []

    def _on_step(self) -> bool:
        values = {k: float(v) for k, v in self.model.logger.name_to_value.items() if k.startswith("train/")}
        if values and (not self.rows or values != self.rows[-1]):
            self.rows.append(values)
        return True


def run(case: str) -> dict[str, Any]:
    """Train a tiny TD3CNN for 90 steps with the health checks and the recorder attached; return its fingerprint."""
    th.manual_seed(0)
    env = make_image_env()
    env.observation_space.seed(0)  # FakeImageEnv's frames come from its space's own RNG, which seed=0 does not reach
    model = make_model(env, learning_starts=32, **CASES[case])
    model.set_logger(Logger(folder=None, output_formats=[]))
    log, recorder = TrainLog(), MetricsRecorder()
    model.learn(90, callback=[TrainingHealthCallback(check_freq=10), recorder, log])
    weights = hashlib.sha256()
    for name, tensor in sorted(model.policy.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return {
        "weights_sha256": weights.hexdigest(),
        "train_log": log.rows,
        "next_random": [random.random(), float(np.random.rand()), float(th.rand(1))],
        "n_updates": model._n_updates,
        # seconds_per_update is a wall-clock time, the one value that differs between two identical runs
        "recorded_updates": [{k: v for k, v in u.items() if k != "seconds_per_update"} for u in recorder.updates],
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_short_td3cnn_run_matches_the_recorded_one(case: str) -> None:
    golden = json.loads(GOLDEN.read_text())[case]
    observed = run(case)
    assert observed["n_updates"] == golden["n_updates"]
    assert observed["next_random"] == golden["next_random"], "the run consumed the global RNGs differently"
    assert len(observed["train_log"]) == len(golden["train_log"])
    for step, (seen, recorded) in enumerate(zip(observed["train_log"], golden["train_log"], strict=True)):
        assert seen == recorded, f"logged train/* values differ at record {step}"
    assert observed["weights_sha256"] == golden["weights_sha256"], "the weights after training differ"
    # What MetricsRecorder keeps (the run's metrics.json, read by summarize() and the reports): same names, same values.
    assert observed["recorded_updates"] == golden["recorded_updates"]


if __name__ == "__main__" and "--write" in sys.argv:
    th.set_num_threads(1)
    GOLDEN.write_text(json.dumps({case: run(case) for case in sorted(CASES)}, indent=1) + "\n")
    print(f"wrote {GOLDEN}")

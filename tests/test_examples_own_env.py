"""Tests for examples/own_env.py: the recipe's wrappers on gymnasium's CarRacing-v3, trained, evaluated and resumed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

from sb3_carla_td3.envs.wrappers import ActionRepeat, OffTrackTermination, PedalMapping, StuckTermination

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "own_env.py"
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("cv2") is None, reason="ResizeObservation needs opencv: pip install opencv-python-headless"
)


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("own_env", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wrappers_of(env: gym.Env) -> list[type]:
    """:return: the wrapper classes around the base env, outermost first"""
    classes = []
    while isinstance(env, gym.Wrapper):
        classes.append(type(env))
        env = env.env
    return classes


@pytest.mark.parametrize("train", [True, False])
def test_make_env_gives_a_channel_first_uint8_stack_and_two_action_axes(train: bool) -> None:
    env = load_example().make_env(0, train=train)
    assert env.observation_space == spaces.Box(0, 255, (4, 40, 40), np.uint8)
    assert env.action_space == spaces.Box(-1.0, 1.0, (2,), np.float32)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 40, 40) and obs.dtype == np.uint8
    env.close()


def test_only_the_training_env_ends_episodes_early() -> None:
    example = load_example()
    train, evaluation = wrappers_of(example.make_env(0, train=True)), wrappers_of(example.make_env(0, train=False))
    assert train[:3] == [OffTrackTermination, StuckTermination, PedalMapping]
    assert evaluation[0] is PedalMapping and StuckTermination not in evaluation and OffTrackTermination not in evaluation
    assert ActionRepeat in evaluation and gym.wrappers.TimeLimit in evaluation  # CarRacing-v3's own 1,000 frames


@pytest.mark.slow
def test_trains_evaluates_checkpoints_and_resumes_to_the_total(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    example = load_example()
    common = ["--eval-freq", "150", "--eval-episodes", "1", "--out", str(tmp_path)]
    assert example.main(["--timesteps", "150", *common]) == 0
    assert example.main(["--timesteps", "300", *common]) == 0
    out = capsys.readouterr().out
    assert "resumed from" in out and "(150 steps)" in out and "completed at 300 steps" in out
    evaluations = json.loads((tmp_path / "eval" / "evaluations.json").read_text())["evaluations"]
    assert [(e["timestep"], e["physics_frames"]) for e in evaluations] == [(150, 600), (300, 1200)]
    assert {"timestep", "physics_frames", "mean_return", "std_return", "returns"} <= set(evaluations[0])
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())
    assert latest["timesteps"] == 300 and latest["replay_buffer"] is not None
    assert (tmp_path / "best_model.zip").is_file() and sum(bool(e.get("best")) for e in evaluations) >= 1
    # Only the newest checkpoint is kept.
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("model_*")) == [
        "model_300_steps.zip",
        "model_300_steps_replay_buffer.pkl",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(("flag", "augment"), [("auto", "shift"), ("none", None)])
def test_augment_is_the_one_argument_off_the_defaults(tmp_path: Path, flag: str, augment: str | None) -> None:
    from sb3_carla_td3 import TD3CNN

    example = load_example()
    assert example.main(["--timesteps", "100", "--eval-freq", "100", "--eval-episodes", "1", "--out", str(tmp_path),
                         "--augment", flag]) == 0  # fmt: skip
    model = TD3CNN.load(tmp_path / "best_model.zip")
    assert model.augment == augment and model.preact_penalty == 0.1  # the rest stays at the defaults


@pytest.mark.slow
def test_evaluate_drives_a_saved_model_on_the_tracks_it_was_picked_on_and_on_others(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    example = load_example()
    assert example.main(["--timesteps", "100", "--eval-freq", "100", "--eval-episodes", "1", "--out", str(tmp_path),
                         "--eval-polyak-actor"]) == 0  # fmt: skip
    (best,) = [e for e in json.loads((tmp_path / "eval" / "evaluations.json").read_text())["evaluations"] if e["best"]]
    model = tmp_path / "best_model.zip"
    # The training evaluation's track, driven again from the saved model: the same return, actor and Polyak actor.
    assert example.evaluate_saved(model, "td3", 1, example.EVAL_SEED) == pytest.approx(best["returns"])
    assert example.evaluate_saved(model, "td3", 1, example.EVAL_SEED, True) == pytest.approx(best["polyak_returns"])
    capsys.readouterr()
    assert example.main(["--evaluate", str(model), "--eval-episodes", "2", "--eval-seed", "20000"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{model} (actor), 2 tracks from seed 20000: mean return ") and line.endswith("(95 % CI)")

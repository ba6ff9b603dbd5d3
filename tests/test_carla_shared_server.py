"""Two CarlaEnv of one process on one (fake) server: phase 3's training env and its evaluation env.

Before the registry (sb3_carla_td3.envs.carla.sharing) the evaluation env's first connect swept the training env's
ego, so the next training step ended with ``carla_error``, and the training env's reconnect restored asynchronous mode
under the evaluation env and swept its actors in turn.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("carla")

from sb3_carla_td3.config import config_from_dict
from sb3_carla_td3.envs.carla.actors import EGO_ROLE, NPC_ROLE, SENSOR_ROLE
from sb3_carla_td3.envs.carla.config import CarlaConfig
from sb3_carla_td3.envs.carla.connection import CarlaBackend
from sb3_carla_td3.envs.carla.env import CarlaEnv
from sb3_carla_td3.envs.carla.fake import FakeCarlaServer
from sb3_carla_td3.envs.carla.sharing import REGISTRY, server_key
from sb3_carla_td3.validation.phases import phase3

XODR = (Path(__file__).parent / "data" / "mini_town.xodr").read_text()
ROUTE = {"start_xy": [-48.0, 1.75], "end_xy": [-18.0, 1.75]}
ENV = {"town": "mini_town", "npc_vehicles": 2, "settle_ticks": 1, "timeout_s": 0.5, "route": ROUTE,
       "camera": {"width": 48, "height": 36}, "image_size": 36, "frames": 2, "max_episode_steps": 30,
       "reconnect_delay_s": 0.0}  # fmt: skip


@pytest.fixture
def server() -> FakeCarlaServer:
    return FakeCarlaServer(XODR)


def make_env(server: FakeCarlaServer, **overrides: Any) -> CarlaEnv:
    return CarlaEnv(CarlaConfig.from_dict({**ENV, **overrides}), backend=server.backend)


def owned_by(server: FakeCarlaServer, env: CarlaEnv) -> set[int]:
    """Ids of the live actors whose role_name carries ``env``'s current owner tag."""
    return {a.id for a in server.actors.values() if a.attributes.get("role_name", "").endswith(f"/{env._owner}")}


def test_an_evaluation_env_connecting_keeps_the_training_envs_actors(server: FakeCarlaServer) -> None:
    training = make_env(server)
    training.reset()
    mine = owned_by(server, training)
    assert len(mine) == 1 + 3 + 2  # ego, camera/collision/lane-invasion sensors, 2 NPCs
    evaluation = make_env(server)  # connects: the sweep runs
    assert mine <= set(server.actors)
    _, _, _, truncated, info = training.step(np.array([0.0, 0.3]))
    assert info["reason"] is None and not truncated
    evaluation.close()
    training.close()


def test_a_reconnect_keeps_the_other_envs_running_episode(server: FakeCarlaServer) -> None:
    training, evaluation = make_env(server), make_env(server)
    evaluation.reset()
    theirs = owned_by(server, evaluation)
    training._disconnect()  # what a carla_error does; the next reset reconnects
    training._connect()
    assert theirs <= set(server.actors) and server.settings.synchronous_mode
    _, _, _, truncated, info = evaluation.step(np.array([0.0, 0.3]))
    assert info["reason"] is None and not truncated
    evaluation.close()
    training.close()


def test_leftovers_of_crashed_runs_are_still_swept(server: FakeCarlaServer) -> None:
    live = make_env(server)
    live.reset()
    kept = owned_by(server, live)
    stale = [
        server.add_actor("vehicle.audi.a2", 0.0, 150.0, role_name=NPC_ROLE),  # untagged (before owner tags)
        server.add_actor("vehicle.audi.a2", 20.0, 150.0, role_name=f"{EGO_ROLE}/otherhost:4194999:0badc0de"),
        server.add_actor("vehicle.audi.a2", 40.0, 150.0, role_name=f"{NPC_ROLE}/{live._owner.rsplit(':', 1)[0]}:deadbeef"),
    ]
    foreign = server.add_actor("vehicle.audi.a2", 60.0, 150.0, role_name="hero")
    other = make_env(server)
    assert not set(stale) & set(server.actors)
    assert kept <= set(server.actors) and foreign in server.actors
    other.close()
    live.close()


def test_an_env_closed_without_close_loses_its_actors_to_the_next_sweep(server: FakeCarlaServer) -> None:
    """A garbage-collected env is not live: its actors count as a crashed run's."""
    gone = make_env(server)
    gone.reset()
    orphans = owned_by(server, gone)
    del gone
    other = make_env(server)
    assert not orphans & set(server.actors)
    other.close()


def test_settings_stay_synchronous_until_the_last_env_of_the_server_closes(
    server: FakeCarlaServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert not server.settings.synchronous_mode
    training = make_env(server)
    with caplog.at_level(logging.WARNING):
        evaluation = make_env(server)  # finds the training env's synchronous mode: not a crashed client's leftover
    assert "found in synchronous mode" not in caplog.text
    evaluation.reset()
    evaluation.close()
    assert server.settings.synchronous_mode and server.tm_synchronous[8000]
    training.reset()
    assert training.step(np.array([0.0, 0.3]))[4]["reason"] is None
    training.close()
    assert not server.settings.synchronous_mode and not server.tm_synchronous[8000]
    assert REGISTRY.others(server_key("localhost", 2000), None) == []


def test_starting_an_episode_interrupts_the_other_envs_episode(server: FakeCarlaServer) -> None:
    training, evaluation = make_env(server), make_env(server)
    training.reset()
    training_actors = owned_by(server, training)
    evaluation.reset()  # one episode at a time: the training episode's actors leave the world
    assert not training_actors & set(server.actors)
    assert len(server.actors_with_role(EGO_ROLE)) == 1 and len(server.actors_with_role(SENSOR_ROLE)) == 3
    obs, reward, terminated, truncated, info = training.step(np.array([0.0, 0.3]))
    assert (reward, terminated, truncated, info["reason"]) == (0.0, False, True, "interrupted")
    assert obs["image"].shape == training.observation_space["image"].shape
    training.reset()
    assert training.step(np.array([0.0, 0.3]))[4]["reason"] is None
    assert evaluation.step(np.array([0.0, 0.3]))[4]["reason"] == "interrupted"
    evaluation.close()
    training.close()


def test_envs_sharing_a_server_must_tick_alike(server: FakeCarlaServer) -> None:
    training = make_env(server)
    with pytest.raises(ValueError, match=r"fixed_delta_seconds=0\.1 differs from 0\.05"):
        make_env(server, fixed_delta_seconds=0.1)
    assert server.settings.synchronous_mode  # the refused env did not restore the training env's settings
    training.close()


TINY_RUN = {
    "env": {"name": "carla", **ENV},
    "encoder": {"cnn": "nature", "rnn": None, "cnn_features": 16, "net_arch": [16], "trunk": None},
    "td3": {"batch_size": 8, "buffer_size": 500, "learning_starts": 50},
    "run": {"total_timesteps": 160, "eval_freq": 40, "eval_episodes": 2, "checkpoint_freq": 0, "progress_bar": False,
            "device": "cpu", "threads": 1},
    "monitor": {"baseline_episodes": 2, "collapse_window": 2, "reward_window": 3, "q_check_freq": 50},
}  # fmt: skip


def test_phase3_evaluates_on_the_training_envs_server_without_carla_errors(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """configs/carla_town01.yaml's situation: eval_freq > 0 and both envs on one server."""
    shared = FakeCarlaServer(XODR)
    monkeypatch.setattr(CarlaBackend, "default", classmethod(lambda cls: shared.backend))
    run_dir = tmp_path / "run"
    phase3(config_from_dict(TINY_RUN, source="one fake CARLA server"), run_dir)
    summary = json.loads((run_dir / "report.json").read_text())["data"]["summary"]
    assert summary["timesteps"] == 160 and summary["status"] == "completed"
    ends = summary["episode_ends"]
    assert "carla_error" not in ends and "server_lost" not in ends, ends
    assert ends.get("interrupted", 0) <= 4  # at most one training episode per evaluation
    evaluations = json.loads((run_dir / "eval" / "evaluations.json").read_text())["evaluations"]
    assert [e["timestep"] for e in evaluations] == [40, 80, 120, 160]
    assert all(length > 1 for e in evaluations for length in e["lengths"])
    assert not shared.actors  # the last evaluation ended the training episode, then closed its own env

"""Leaderboard metrics from CarlaEnv on the fake server: the events behind the counts (a vehicle vs a static
collision, a lane invasion, off-road, blocked), and a fake-server phase-3 run and ``evaluate`` showing the table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("carla")

from sb3_carla_td3 import cli
from sb3_carla_td3.config import config_from_dict
from sb3_carla_td3.envs.carla.actors import EGO_ROLE
from sb3_carla_td3.envs.carla.config import CarlaConfig
from sb3_carla_td3.envs.carla.connection import CarlaBackend
from sb3_carla_td3.envs.carla.env import CarlaEnv
from sb3_carla_td3.envs.carla.fake import FakeCarlaServer
from sb3_carla_td3.validation.evaluation import run_episodes
from sb3_carla_td3.validation.phases import phase3

XODR = (Path(__file__).parent / "data" / "mini_town.xodr").read_text()
# A straight 30 m stretch of road 1's eastbound lane (y from 0 to 3.5 m), as in test_carla_env.py.
ROUTE = {"start_xy": [-48.0, 1.75], "end_xy": [-18.0, 1.75]}
ENV = {"name": "carla", "town": "mini_town", "npc_vehicles": 0, "settle_ticks": 1, "timeout_s": 0.5, "route": ROUTE,
       "camera": {"width": 48, "height": 36}, "image_size": 36, "frames": 2, "max_episode_steps": 30}  # fmt: skip


@pytest.fixture
def server() -> FakeCarlaServer:
    return FakeCarlaServer(XODR)


def straight_env(server: FakeCarlaServer, **overrides: Any) -> CarlaEnv:
    fields = {k: v for k, v in ENV.items() if k != "name"} | overrides
    return CarlaEnv(CarlaConfig.from_dict(fields), backend=server.backend)


def ego_id(server: FakeCarlaServer) -> int:
    (actor,) = server.actors_with_role(EGO_ROLE)
    return int(actor.id)


@pytest.mark.parametrize(
    ("other", "type_ids"), [("vehicle", ["vehicle.audi.a2"]), ("static.pole", ["static.pole"]), (None, [""])]
)
def test_collision_info_names_the_other_actors_type(server: FakeCarlaServer, other: str | None, type_ids: list[str]) -> None:
    env = straight_env(server)
    env.reset()
    if other == "vehicle":
        server.inject_collision(server.add_actor("vehicle.audi.a2", 0.0, -1.75, "someone_else"))
    else:
        server.inject_collision(other)  # a map object: 0.9.16 may give an actor "static.*" or none at all
    info = env.step(np.zeros(2))[4]
    assert info["reason"] == "collision" and info["collision_types"] == type_ids
    env.close()


def test_lane_invasion_and_off_road_are_reported_per_step(server: FakeCarlaServer) -> None:
    env = straight_env(server)
    env.reset()
    info = env.step(np.zeros(2))[4]
    assert info["lane_invasions"] == 0 and info["off_driving_lane"] is False
    server.inject_lane_invasion()
    assert env.step(np.zeros(2))[4]["lane_invasions"] == 1
    server.move_actor(ego_id(server), -40.0, 4.5)  # past the lane's edge at 3.5 m, within the 3 m route deviation
    info = env.step(np.zeros(2))[4]
    assert info["off_driving_lane"] is True and info["reason"] is None
    env.close()


def test_an_agent_that_stands_still_ends_its_route_blocked(server: FakeCarlaServer) -> None:
    env = straight_env(server, stuck_seconds=0.2)
    _, lengths, driving = run_episodes(lambda observation: np.zeros(2), env, 1, seed=0)
    assert lengths == [4] and driving[0].end_reason == "stuck" and driving[0].infractions["agent_blocked"] == 1
    assert driving[0].progress_m < 1.0 and not driving[0].completed
    env.close()


TINY_RUN = {
    "env": ENV,
    "encoder": {"cnn": "nature", "rnn": None, "cnn_features": 16, "net_arch": [16], "trunk": None},
    "td3": {"batch_size": 8, "buffer_size": 500, "learning_starts": 50},
    "run": {"total_timesteps": 80, "eval_freq": 40, "eval_episodes": 2, "checkpoint_freq": 80, "progress_bar": False,
            "device": "cpu", "threads": 1},
    "monitor": {"baseline_episodes": 2, "collapse_window": 2, "reward_window": 3, "q_check_freq": 50},
}  # fmt: skip


def test_fake_server_run_reports_the_leaderboard_table_and_evaluate_writes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(CarlaBackend, "default", classmethod(lambda cls: FakeCarlaServer(XODR).backend))
    run_dir = tmp_path / "run"
    phase3(config_from_dict(TINY_RUN, source="fake CARLA run"), run_dir)
    report = (run_dir / "report.md").read_text()
    assert "## Leaderboard metrics (CARLA, last evaluation at 80 steps)" in report
    assert "| collisions_vehicle | 0.60 |" in report and "| red_light | 0.70 | n/a | n/a |" in report
    data = json.loads((run_dir / "report.json").read_text())["data"]["leaderboard"]
    assert data["n_episodes"] == 2 and 0.0 <= data["driving_score"] <= data["route_completion"] <= 100.0
    with (run_dir / "progress.csv").open() as f:
        columns = next(csv.reader(f))
    assert {"eval/route_completion", "eval/driving_score", "eval/infractions_per_km/collisions_static"} <= set(columns)

    assert cli.main(["evaluate", str(run_dir), "--episodes", "1"]) == 0
    assert "| **mean** |" in capsys.readouterr().out
    evaluated = json.loads((run_dir / "evaluate" / "report.json").read_text())
    assert evaluated["leaderboard"]["n_episodes"] == 1
    assert "## Leaderboard metrics" in (run_dir / "evaluate" / "report.md").read_text()

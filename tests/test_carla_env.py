"""CarlaEnv against the in-process fake server: lifecycle, sensor sync, error paths, spaces, episode ends.

The env code under test is the real one; only the server is faked (sb3_carla_td3.envs.carla.fake), on a real
``carla.Map`` built offline from tests/data/mini_town.xodr.
"""

from __future__ import annotations

import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("carla")

from gymnasium.utils.env_checker import check_env

from sb3_carla_td3.envs.carla import env as carla_env_module
from sb3_carla_td3.envs.carla.actors import EGO_ROLE, NPC_ROLE
from sb3_carla_td3.envs.carla.config import CarlaConfig
from sb3_carla_td3.envs.carla.env import CarlaEnv
from sb3_carla_td3.envs.carla.fake import FakeCarlaServer
from sb3_carla_td3.envs.carla.sensors import preprocess_image
from sb3_carla_td3.errors import CarlaConnectionError

XODR = (Path(__file__).parent / "data" / "mini_town.xodr").read_text()
# A straight 30 m stretch of road 1's eastbound lane (CARLA y = +1.75), ending 8 m before junction 1000.
STRAIGHT_START, STRAIGHT_END = [-48.0, 1.75], [-18.0, 1.75]


@pytest.fixture
def server() -> FakeCarlaServer:
    return FakeCarlaServer(XODR)


def make_env(server: FakeCarlaServer, render_mode: str | None = None, **overrides: Any) -> CarlaEnv:
    fields = {"town": "mini_town", "npc_vehicles": 4, "settle_ticks": 2, "timeout_s": 0.5, "reconnect_delay_s": 0.0}
    fields.update(overrides)
    return CarlaEnv(CarlaConfig.from_dict(fields), render_mode=render_mode, backend=server.backend)


def straight_env(server: FakeCarlaServer, **overrides: Any) -> CarlaEnv:
    route = {"start_xy": STRAIGHT_START, "end_xy": STRAIGHT_END, **overrides.pop("route", {})}
    return make_env(server, route=route, npc_vehicles=0, **overrides)


def ego(server: FakeCarlaServer) -> Any:
    (actor,) = server.actors_with_role(EGO_ROLE)
    return actor


# ---------------------------------------------------------------- lifecycle
def test_hundred_resets_leave_no_live_actors(server: FakeCarlaServer) -> None:
    env = make_env(server)
    for _ in range(100):
        _, info = env.reset()
        assert len(server.actors) == 1 + 3 + info["npc_spawned"]  # ego, 3 sensors, NPCs: nothing accumulates
    env.close()
    assert server.actors == {}


def test_npcs_run_on_the_configured_traffic_manager(server: FakeCarlaServer) -> None:
    env = make_env(server, npc_vehicles=6, tm_port=8123, seed=5)
    _, info = env.reset()
    npcs = server.actors_with_role(NPC_ROLE)
    assert info["npc_spawned"] == len(npcs) > 0
    assert all(npc._autopilot and npc.type_id != "vehicle.bh.crossbike" for npc in npcs)  # no bikes
    assert server.tm_synchronous == {8123: True} and server.tm_seeds == {8123: 5}
    env.close()


def test_connect_sets_synchronous_mode_and_close_restores_settings(server: FakeCarlaServer) -> None:
    env = make_env(server, fixed_delta_seconds=0.04)
    assert server.settings.synchronous_mode and server.settings.fixed_delta_seconds == pytest.approx(0.04)
    env.reset()
    env.close()
    assert not server.settings.synchronous_mode and server.settings.fixed_delta_seconds is None
    assert server.tm_synchronous[env.config.tm_port] is False


def test_tick_failure_then_close_restores_settings(server: FakeCarlaServer) -> None:
    env = straight_env(server)
    env.reset()
    server.fail_call("World.tick")
    assert env.step(np.array([0.0, 0.5]))[4]["reason"] == "carla_error"
    env.close()
    assert not server.settings.synchronous_mode and server.tm_synchronous[env.config.tm_port] is False


def test_settings_are_restored_through_a_fresh_client_when_the_old_one_is_gone(server: FakeCarlaServer) -> None:
    env = straight_env(server)
    env.reset()
    server.drop_connections()  # the env's client times out from now on; the server keeps its synchronous mode
    assert env.step(np.array([0.0, 0.5]))[4]["reason"] == "server_lost"
    assert server.settings.synchronous_mode
    env.close()
    assert server.connections == 2
    assert not server.settings.synchronous_mode and server.settings.fixed_delta_seconds is None
    assert server.tm_synchronous[env.config.tm_port] is False


@pytest.mark.parametrize(("error", "raised"), [(None, CarlaConnectionError), (ValueError("boom"), ValueError)])
def test_failure_inside_connect_after_apply_settings_restores_them(
    server: FakeCarlaServer, error: BaseException | None, raised: type
) -> None:
    server.fail_call("TrafficManager.set_synchronous_mode", error)  # right after world.apply_settings
    with pytest.raises(raised):
        make_env(server)
    assert not server.settings.synchronous_mode and server.settings.fixed_delta_seconds is None


def test_leftover_synchronous_mode_is_not_taken_as_the_original_setting(
    server: FakeCarlaServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.settings.synchronous_mode, server.settings.fixed_delta_seconds = True, 0.1  # a crashed client's
    env = make_env(server)
    assert "found in synchronous mode" in caplog.text
    env.reset()
    env.close()
    assert not server.settings.synchronous_mode and server.settings.fixed_delta_seconds is None


def test_close_is_idempotent(server: FakeCarlaServer) -> None:
    env = make_env(server)
    env.reset()
    env.close()
    env.close()
    assert server.actors == {}
    assert server.connections == 1


def test_stale_actors_from_a_dead_run_are_swept_on_connect(server: FakeCarlaServer) -> None:
    stale = server.add_actor("vehicle.audi.a2", 0.0, 150.0, role_name=NPC_ROLE)
    foreign = server.add_actor("vehicle.audi.a2", 20.0, 150.0, role_name="hero")
    make_env(server).close()
    assert stale not in server.actors and foreign in server.actors


def test_other_town_is_loaded(server: FakeCarlaServer) -> None:
    make_env(server, town="Town01").close()
    assert server.loaded_worlds == ["Town01"]


def test_loading_another_town_starts_from_default_settings_and_close_keeps_them(
    server: FakeCarlaServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.settings.synchronous_mode, server.settings.fixed_delta_seconds = True, 0.1
    env = make_env(server, town="Town01")  # load_world(reset_settings=True), as in 0.9.16
    assert "found in synchronous mode" not in caplog.text
    env.close()
    assert not server.settings.synchronous_mode and server.settings.fixed_delta_seconds is None


# ---------------------------------------------------------------- sensor sync
@pytest.mark.parametrize("delay_s", [0.0, 0.003])
def test_sensor_frames_match_ticks(delay_s: float) -> None:
    server = FakeCarlaServer(XODR, sensor_delay_s=delay_s)
    env = make_env(server)
    env.reset(seed=0)
    assert env.last_image_frame == server.frame
    for _ in range(10):
        _, _, terminated, truncated, _ = env.step(np.array([0.0, 0.2]))
        assert env.last_image_frame == server.frame
        assert not truncated
        if terminated:
            env.reset()
    env.close()


def test_stale_image_is_dropped_not_observed(server: FakeCarlaServer) -> None:
    env = straight_env(server)
    env.reset()
    server.send_stale_images(1)
    obs, _, _, truncated, _ = env.step(np.array([0.0, 0.0]))
    white = preprocess_image(np.full((env.config.camera.height, env.config.camera.width, 3), 255, np.uint8), 84, True)
    assert not truncated and env.last_image_frame == server.frame
    assert not np.array_equal(obs["image"][-1:], white)
    env.close()


@pytest.mark.parametrize(
    ("inject", "fragment"),
    [
        (lambda s: s.fail_call("World.tick"), "time-out"),
        (lambda s: s.drop_camera_frames(1), "camera sent no data"),
        (lambda s: s.skip_camera_frame(1), "camera delivered frame"),
    ],
)
def test_tick_or_sensor_failure_truncates_and_next_reset_reconnects(
    server: FakeCarlaServer, inject: Any, fragment: str
) -> None:
    env = straight_env(server)
    env.reset()
    inject(server)
    _, reward, terminated, truncated, info = env.step(np.array([0.0, 0.5]))
    assert (terminated, truncated, reward, info["reason"]) == (False, True, 0.0, "carla_error")
    assert fragment in info["carla_error"]
    assert server.actors == {}
    env.reset()
    assert server.connections == 2
    assert not any(env.step(np.array([0.0, 0.5]))[2:4])
    env.close()


# ---------------------------------------------------------------- failures during reset
@pytest.mark.parametrize("error", [ValueError("boom"), KeyboardInterrupt()])
def test_exception_during_reset_still_cleans_up(server: FakeCarlaServer, error: BaseException) -> None:
    env = make_env(server)
    env.reset()
    server.fail_call("Sensor.listen", error)  # after the ego and the sensors exist
    with pytest.raises(type(error)):
        env.reset()
    assert server.actors == {}
    env.reset()  # the env stays usable
    assert len(server.actors) > 0
    env.close()


def test_timeout_during_reset_raises_connection_error_and_reconnects(server: FakeCarlaServer) -> None:
    env = make_env(server, reconnect_attempts=1)
    server.fail_call("World.tick")  # during the settle ticks
    with pytest.raises(CarlaConnectionError, match="failed during reset"):
        env.reset()
    assert server.actors == {}
    env.reset()
    assert server.connections == 2
    env.close()


@pytest.mark.parametrize("inject", [lambda s: s.drop_camera_frames(1), lambda s: s.skip_camera_frame(1)])
def test_a_lost_camera_frame_while_settling_is_tolerated(server: FakeCarlaServer, inject: Any) -> None:
    env = make_env(server, settle_ticks=3)
    inject(server)  # the first settle tick loses its camera frame
    obs, _ = env.reset()
    assert env.last_image_frame == server.frame and obs["image"][-1].any()
    assert server.connections == 1
    env.close()


def test_a_frame_lost_on_the_last_settle_tick_takes_one_more_tick(server: FakeCarlaServer) -> None:
    env = make_env(server, settle_ticks=1)
    frame_before = server.frame
    server.drop_camera_frames(1)
    env.reset()
    assert server.frame == frame_before + 2 and env.last_image_frame == server.frame
    env.close()


@pytest.mark.parametrize(("allowed", "dropped"), [(0, 1), (2, 3)])
def test_more_lost_settle_frames_than_allowed_fail_the_reset(server: FakeCarlaServer, allowed: int, dropped: int) -> None:
    env = make_env(server, settle_ticks=5, settle_max_dropped_frames=allowed, timeout_s=0.05, reconnect_attempts=1)
    server.drop_camera_frames(dropped)
    with pytest.raises(CarlaConnectionError, match="camera sent no data"):
        env.reset()
    assert server.actors == {}
    env.reset()  # the next reset reconnects and works
    env.close()


# ---------------------------------------------------------------- server loss
def test_server_lost_mid_episode_truncates_and_reset_reconnects(server: FakeCarlaServer) -> None:
    env = straight_env(server)
    env.reset()
    server.kill()
    obs, reward, terminated, truncated, info = env.step(np.array([0.0, 0.5]))  # no exception
    assert (terminated, truncated, reward, info["reason"]) == (False, True, 0.0, "server_lost")
    assert obs["image"].shape == env.observation_space["image"].shape
    server.restart()
    _, info = env.reset()
    assert info["reset_attempts"] == 1 and server.connections == 2
    assert server.settings.synchronous_mode and len(server.actors) == 1 + 3
    assert not any(env.step(np.array([0.0, 0.5]))[2:4])
    env.close()
    assert server.actors == {} and not server.settings.synchronous_mode


def test_reset_backs_off_until_the_server_is_back(server: FakeCarlaServer, monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    def wait(seconds: float) -> None:
        delays.append(seconds)
        if len(delays) == 2:
            server.restart()  # the server is back after the second wait

    monkeypatch.setattr(carla_env_module, "_sleep", wait)
    env = straight_env(server, reconnect_attempts=5, reconnect_delay_s=1.0, reconnect_max_delay_s=30.0)
    env.reset()
    server.kill()
    assert env.step(np.array([0.0, 0.5]))[4]["reason"] == "server_lost"
    _, info = env.reset()
    assert delays == [1.0, 2.0] and info["reset_attempts"] == 3
    env.close()


def test_reset_raises_connection_error_only_after_the_last_attempt(
    server: FakeCarlaServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    delays: list[float] = []
    monkeypatch.setattr(carla_env_module, "_sleep", delays.append)
    env = straight_env(server, reconnect_attempts=5, reconnect_delay_s=1.0, reconnect_max_delay_s=3.0)
    env.reset()
    server.kill()
    env.step(np.array([0.0, 0.5]))
    with pytest.raises(CarlaConnectionError, match="gave up after 5 reset attempts"):
        env.reset()
    assert delays == [1.0, 2.0, 3.0, 3.0]  # doubling, capped; no wait after the last attempt
    server.restart()
    env.reset()  # still usable once the server is back
    env.close()


# ---------------------------------------------------------------- spaces and observations
@pytest.mark.parametrize("render_mode", [None, "rgb_array"])
def test_gymnasium_check_env_passes(server: FakeCarlaServer, render_mode: str | None) -> None:
    env = make_env(server, render_mode=render_mode)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not having a spec.*")
        check_env(env)
    env.close()


def test_seeded_resets_repeat_exactly(server: FakeCarlaServer) -> None:
    env = make_env(server)
    first, info_first = env.reset(seed=7)
    env.reset(seed=8)
    again, info_again = env.reset(seed=7)
    assert info_first == info_again
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    env.close()


@pytest.mark.parametrize(("grayscale", "channels"), [(True, 1), (False, 3)])
def test_frame_stack_is_zero_but_newest_at_reset_and_shifts_left(
    server: FakeCarlaServer, grayscale: bool, channels: int
) -> None:
    env = straight_env(server, grayscale=grayscale, frames=3)
    obs, _ = env.reset()
    assert env.frame_stack == 3
    assert obs["image"].shape == (3 * channels, 84, 84) and obs["image"].dtype == np.uint8
    assert not obs["image"][: 2 * channels].any() and obs["image"][2 * channels :].any()
    newest = obs["image"][-channels:]
    obs, *_ = env.step(np.array([0.0, 1.0]))
    np.testing.assert_array_equal(obs["image"][channels : 2 * channels], newest)
    assert not obs["image"][:channels].any()
    env.close()


def test_vector_observation_on_a_straight_route(server: FakeCarlaServer) -> None:
    env = straight_env(server, route={"lookahead_m": 20.0})
    obs, _ = env.reset()
    cfg = env.config.route
    speed, lateral, heading = obs["vector"][:3]
    points = obs["vector"][3:].reshape(cfg.n_waypoints, 2)
    assert obs["vector"].shape == (3 + 2 * cfg.n_waypoints,) and obs["vector"].dtype == np.float32
    assert abs(speed) < 1e-6 and abs(lateral) < 1e-3 and abs(heading) < 1e-3
    spacing = cfg.lookahead_m / cfg.n_waypoints / cfg.lookahead_m
    np.testing.assert_allclose(points[:, 0], spacing * np.arange(1, cfg.n_waypoints + 1), atol=1e-3)
    np.testing.assert_allclose(points[:, 1], 0.0, atol=1e-3)
    env.close()


def test_waypoints_near_the_route_end_repeat_the_end_not_zeros(server: FakeCarlaServer) -> None:
    env = straight_env(server, route_end_tolerance_m=0.5)
    env.reset()
    server.move_actor(ego(server).id, STRAIGHT_END[0] - 12.0, STRAIGHT_END[1])
    obs, _, terminated, _, _ = env.step(np.array([0.0, 0.0]))
    points = obs["vector"][3:].reshape(-1, 2) * env.config.route.lookahead_m
    assert not terminated
    np.testing.assert_allclose(points[-1], [12.0, 0.0], atol=0.05)
    assert np.allclose(points[2:], points[-1], atol=0.05) and np.all(points[:, 0] > 0)
    env.close()


@pytest.mark.parametrize("action", [np.zeros(3), np.zeros((2, 1)), 0.5, [np.nan, 0.0], [0.0, np.inf], ["a", "b"]])
def test_invalid_action_raises_value_error_naming_action_and_space(server: FakeCarlaServer, action: Any) -> None:
    env = straight_env(server)
    env.reset()
    with pytest.raises(ValueError, match=r"action must .*Box\(-1\.0, 1\.0, \(2,\), float32\)"):
        env.step(action)
    env.close()


def test_actions_are_clipped_before_vehicle_control(server: FakeCarlaServer) -> None:
    env = straight_env(server)
    env.reset()
    env.step(np.array([5.0, -7.0]))
    control = ego(server)._control
    assert (control.steer, control.throttle, control.brake) == (1.0, 0.0, 1.0)
    env.close()


def test_step_before_reset_raises(server: FakeCarlaServer) -> None:
    env = make_env(server)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(2))
    env.close()


def test_render_returns_the_camera_image(server: FakeCarlaServer) -> None:
    env = straight_env(server, render_mode="rgb_array")
    env.reset()
    frame = env.render()
    assert frame.shape == (env.config.camera.height, env.config.camera.width, 3) and frame.dtype == np.uint8
    env.close()


# ---------------------------------------------------------------- rewards, info and episode ends
def test_info_is_plain_picklable_and_reward_is_the_sum_of_terms(server: FakeCarlaServer) -> None:
    env = make_env(server)
    _, info = env.reset(seed=1)
    infos = [info]
    rng = np.random.default_rng(0)
    for _ in range(15):
        _, reward, terminated, truncated, info = env.step(rng.uniform(-1, 1, 2))
        infos.append(info)
        assert reward == pytest.approx(sum(info["reward_terms"].values()))
        if terminated or truncated:
            break
    for item in infos:
        pickle.loads(pickle.dumps(item))
        flat = [*item.values(), *item.get("reward_terms", {}).values()]
        assert all(type(v).__module__ == "builtins" for v in flat), item
    env.close()


def test_driving_the_route_completes_it_with_progress_per_metre(server: FakeCarlaServer) -> None:
    env = straight_env(server, max_episode_steps=2000)
    _, info = env.reset()
    route_length, progress = info["route_length_m"], 0.0
    for _ in range(2000):
        _, _, terminated, truncated, info = env.step(np.array([0.0, 0.6]))
        progress += info["reward_terms"]["progress"]
        if terminated or truncated:
            break
    assert info["reason"] == "route_completed" and terminated
    remaining = route_length - info["route_progress_m"]
    assert progress == pytest.approx(env.config.reward.progress_weight * (route_length - remaining), rel=1e-6)
    env.close()


def test_waypoint_file_route_sets_the_target_speed(server: FakeCarlaServer, tmp_path: Path) -> None:
    path = tmp_path / "route.csv"
    xs = np.linspace(STRAIGHT_START[0], STRAIGHT_END[0], 7)
    path.write_text("".join(f"{x:.2f}, {STRAIGHT_START[1]}, 4.0\n" for x in xs))
    env = make_env(server, npc_vehicles=0, route={"waypoint_file": str(path)}, reward={"target_speed_mps": 9.0})
    _, info = env.reset()
    assert info["route_length_m"] == pytest.approx(xs[-1] - xs[0])
    server.move_actor(ego(server).id, STRAIGHT_START[0] + 3.0, STRAIGHT_START[1], speed=4.0)
    info = env.step(np.array([0.0, 0.0]))[4]  # no throttle, no brake: the speed stays at the file's 4 m/s
    assert info["reward_terms"]["efficiency"] == pytest.approx(env.config.reward.efficiency_weight)
    env.close()


def test_collision_terminates_with_the_configured_penalty(server: FakeCarlaServer) -> None:
    env = straight_env(server, reward={"collision_penalty": -42.0})
    env.reset()
    server.inject_collision()
    _, _, terminated, truncated, info = env.step(np.array([0.0, 0.3]))
    assert (terminated, truncated, info["reason"]) == (True, False, "collision")
    assert info["reward_terms"]["collision"] == -42.0
    env.close()


def test_lane_invasion_is_penalised_without_ending_the_episode(server: FakeCarlaServer) -> None:
    env = straight_env(server)
    env.reset()
    server.inject_lane_invasion()
    _, _, terminated, truncated, info = env.step(np.array([0.0, 0.3]))
    assert not terminated and not truncated and info["lane_invasion"]
    assert info["reward_terms"]["safety"] == pytest.approx(-env.config.reward.safety_weight)
    env.close()


def test_leaving_the_route_terminates_off_route(server: FakeCarlaServer) -> None:
    env = straight_env(server, max_lateral_deviation_m=2.0)
    env.reset()
    server.move_actor(ego(server).id, STRAIGHT_START[0] + 5.0, STRAIGHT_START[1] + 2.5)  # 2.5 m right of the lane
    _, _, terminated, _, info = env.step(np.array([0.0, 0.0]))
    assert (terminated, info["reason"]) == (True, "off_route")
    assert info["lateral_m"] == pytest.approx(2.5, abs=0.05)
    assert info["reward_terms"]["off_road"] == env.config.reward.off_road_penalty == -10.0
    env.close()


def test_max_steps_truncates(server: FakeCarlaServer) -> None:
    env = straight_env(server, max_episode_steps=3)
    env.reset()
    ends = [env.step(np.array([0.0, 0.5]))[2:4] for _ in range(3)]
    assert ends == [(False, False), (False, False), (False, True)]
    env.close()


def test_stuck_truncates_after_stuck_seconds_of_simulated_time(server: FakeCarlaServer) -> None:
    env = straight_env(server, stuck_seconds=0.5, fixed_delta_seconds=0.05)
    env.reset()
    reasons = [env.step(np.array([0.0, -1.0]))[4]["reason"] for _ in range(10)]
    assert reasons == [None] * 9 + ["stuck"]
    env.close()


def test_stuck_penalty_makes_stuck_a_penalised_termination(server: FakeCarlaServer) -> None:
    env = straight_env(server, stuck_seconds=0.5, fixed_delta_seconds=0.05, reward={"stuck_penalty": -25.0})
    env.reset()
    steps = [env.step(np.array([0.0, -1.0])) for _ in range(10)]
    _, reward, terminated, truncated, info = steps[-1]
    assert (info["reason"], terminated, truncated) == ("stuck", True, False)
    assert info["reward_terms"]["stuck"] == -25.0 and steps[-2][4]["reward_terms"]["stuck"] == 0.0
    assert reward == pytest.approx(sum(info["reward_terms"].values()))
    env.close()


def test_max_brake_scales_the_brake_control(server: FakeCarlaServer) -> None:
    env = straight_env(server, max_brake=0.3)
    env.reset()
    env.step(np.array([0.0, -1.0]))
    assert ego(server)._control.brake == pytest.approx(0.3)
    env.step(np.array([0.0, 0.5]))
    assert (ego(server)._control.throttle, ego(server)._control.brake) == (0.5, 0.0)
    env.close()


def test_stuck_timer_restarts_when_the_car_moves(server: FakeCarlaServer) -> None:
    env = straight_env(server, stuck_seconds=0.5, fixed_delta_seconds=0.05)  # 10 steps
    env.reset()
    actions = [[0.0, -1.0]] * 5 + [[0.0, 1.0]] * 3 + [[0.0, 0.0]] * 10  # brake, speed up past 0.5 m/s, coast
    infos = [env.step(np.array(a))[4] for a in actions]
    assert infos[7]["speed_mps"] > env.config.stuck_speed_mps
    assert [info["reason"] for info in infos] == [None] * len(actions)
    env.close()


def test_heading_error_is_signed_against_the_route(server: FakeCarlaServer) -> None:
    env = straight_env(server)
    env.reset()
    server.move_actor(ego(server).id, STRAIGHT_START[0] + 5.0, STRAIGHT_START[1], yaw_deg=20.0)
    obs, _, _, _, info = env.step(np.array([0.0, 0.0]))
    assert info["heading_error_rad"] == pytest.approx(math.radians(20.0), abs=1e-3)
    assert obs["vector"][2] == pytest.approx(math.radians(20.0) / math.pi, abs=1e-3)
    env.close()

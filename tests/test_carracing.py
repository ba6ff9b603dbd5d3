"""Tests for sb3_carla_td3.envs.carracing: spaces, action mapping, frame stack, episode ends, seeding, config."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from gymnasium.envs.box2d.car_racing import CarRacing
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from sb3_carla_td3.envs.carracing import VECTOR_FIELDS, CarRacingConfig, CarRacingEnv, vector_fields
from sb3_carla_td3.errors import ConfigError

STEER_RIGHT_FULL_GAS = np.array([1.0, 1.0], dtype=np.float32)
IDLE = np.array([0.0, 0.0], dtype=np.float32)


def make_env(**options: Any) -> CarRacingEnv:
    return CarRacingEnv(CarRacingConfig(**options))


def capture_controls(env: CarRacingEnv) -> list[np.ndarray]:
    """Wrap the inner CarRacing's step so that each [steer, gas, brake] it receives is recorded."""
    controls: list[np.ndarray] = []
    inner_step = env._core.step

    def step(action: np.ndarray | None) -> tuple:
        if action is not None:
            controls.append(np.array(action, dtype=np.float64))
        return inner_step(action)

    env._core.step = step
    return controls


@pytest.mark.parametrize("vector_obs", [False, True])
def test_gymnasium_check_env_passes(vector_obs: bool) -> None:
    gym_check_env(make_env(vector_obs=vector_obs), skip_render_check=True)


@pytest.mark.parametrize("vector_obs", [False, True])
def test_sb3_check_env_passes(vector_obs: bool) -> None:
    sb3_check_env(make_env(vector_obs=vector_obs), warn=True)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ([0.3, 0.7], [0.3, 0.7, 0.0]),  # positive throttle_brake is gas
        ([-0.5, -0.4], [-0.5, 0.0, 0.4]),  # negative throttle_brake is brake = -value
        ([0.0, 0.0], [0.0, 0.0, 0.0]),
        ([3.0, -2.0], [1.0, 0.0, 1.0]),  # out of the space: clipped
    ],
)
def test_action_maps_onto_steer_gas_brake(action: list[float], expected: list[float]) -> None:
    env = make_env(image_size=36)
    env.reset(seed=0)
    controls = capture_controls(env)
    env.step(np.array(action, dtype=np.float32))
    np.testing.assert_allclose(controls, [expected], atol=1e-6)


def test_action_reaches_the_car() -> None:
    env = make_env(image_size=36)
    env.reset(seed=0)
    env.step(STEER_RIGHT_FULL_GAS)
    car = env._core.car
    # CarRacing negates the steer command for its wheel joints; gas rises by at most 0.1 per frame (rear drive).
    assert [wheel.steer for wheel in car.wheels[:2]] == [-1.0, -1.0]
    assert [wheel.gas for wheel in car.wheels[2:]] == pytest.approx([0.1, 0.1])
    assert [wheel.brake for wheel in car.wheels] == [0.0] * 4


def test_negative_throttle_brakes_the_car() -> None:
    env = make_env(image_size=36)
    env.reset(seed=0)
    env.step(np.array([0.0, -0.8], dtype=np.float32))
    assert [wheel.brake for wheel in env._core.car.wheels] == pytest.approx([0.8] * 4)


def test_action_repeat_sends_the_control_to_every_frame() -> None:
    env = make_env(image_size=36, action_repeat=3)
    env.reset(seed=0)
    controls = capture_controls(env)
    env.step(np.array([0.2, 0.5], dtype=np.float32))
    np.testing.assert_allclose(controls, [[0.2, 0.5, 0.0]] * 3, atol=1e-6)


@pytest.mark.parametrize(
    "action",
    [np.zeros(3, dtype=np.float32), np.zeros((1, 2), dtype=np.float32), [np.nan, 0.0], [0.0, np.inf], "gas"],
)
def test_bad_action_raises_value_error(action: Any) -> None:
    env = make_env(image_size=36)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be a finite array of shape \(2,\) in Box"):
        env.step(action)


def test_reset_stack_is_zero_except_newest_frame() -> None:
    obs, _ = make_env(frames=4).reset(seed=0)
    assert not obs[:3].any()
    assert obs[3].any()


def test_step_shifts_stack_by_one_frame_newest_last() -> None:
    env = make_env(frames=4, image_size=36)
    newest = [env.reset(seed=0)[0][-1]]
    for _ in range(4):
        obs = env.step(np.array([0.0, 1.0], dtype=np.float32))[0]
        newest.append(obs[-1])
    assert not all(np.array_equal(newest[0], frame) for frame in newest[1:]), "the car should move between frames"
    np.testing.assert_array_equal(obs, np.stack(newest[1:]))


def test_rgb_stack_keeps_each_frames_three_channels_together() -> None:
    env = make_env(frames=2, grayscale=False, image_size=36)
    first = env.reset(seed=0)[0]
    second = env.step(IDLE)[0]
    assert not first[:3].any()
    np.testing.assert_array_equal(second[:3], first[3:])


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({}, (4, 84, 84)),
        ({"image_size": 36}, (4, 36, 36)),
        ({"image_size": 36, "grayscale": False}, (12, 36, 36)),
        ({"image_size": 36, "frames": 2, "crop_hud": False}, (2, 36, 36)),
    ],
)
def test_image_observation_dtype_and_shape(options: dict[str, Any], shape: tuple[int, ...]) -> None:
    env = make_env(**options)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.uint8
    assert obs.shape == shape == env.observation_space.shape
    assert env.frame_stack == env.config.frames


def test_vector_observation_matches_vector_fields() -> None:
    env = make_env(image_size=36, vector_obs=True)
    obs, _ = env.reset(seed=0)
    assert obs["vector"].dtype == np.float32
    assert obs["vector"].shape == (len(VECTOR_FIELDS),) == env.observation_space["vector"].shape
    assert obs["image"].shape == (4, 36, 36)


def test_vector_at_start_is_centred_and_aligned_with_the_track() -> None:
    env = make_env(image_size=36, vector_obs=True)
    env.reset(seed=0)
    for _ in range(20):
        obs = env.step(np.array([0.0, 0.5], dtype=np.float32))[0]
    vector = dict(zip(VECTOR_FIELDS, obs["vector"].tolist(), strict=True))
    assert vector["forward_speed"] > 0.05
    assert vector["on_track"] == 1.0
    assert abs(vector["heading_error"]) < 0.05
    assert abs(vector["lateral_offset"]) < 0.2


def test_steering_right_gives_positive_yaw_steer_and_offset() -> None:
    env = make_env(image_size=36, vector_obs=True)
    env.reset(seed=0)
    for _ in range(30):
        obs = env.step(STEER_RIGHT_FULL_GAS)[0]
    vector = dict(zip(VECTOR_FIELDS, obs["vector"].tolist(), strict=True))
    assert vector["steer_angle"] == pytest.approx(1.0, abs=0.01)
    assert vector["yaw_rate"] > 0.0
    assert vector["lateral_offset"] > 0.0
    assert vector["heading_error"] < 0.0  # the car points right of the track, so the track lies to its left


def test_offtrack_terminates_after_n_consecutive_steps_off_the_road() -> None:
    env = make_env(image_size=36, vector_obs=True, offtrack_steps=5, offtrack_penalty=-50.0)
    env.reset(seed=0)
    on_track = []
    for _ in range(200):
        obs, reward, terminated, truncated, info = env.step(STEER_RIGHT_FULL_GAS)
        on_track.append(obs["vector"][VECTOR_FIELDS.index("on_track")])
        if terminated or truncated:
            break
    assert terminated and not truncated
    assert info["reason"] == "offtrack"
    assert on_track[-5:] == [0.0] * 5
    assert on_track[-6] > 0.0
    assert reward <= -50.0


def test_stuck_truncates_when_the_car_stands_still() -> None:
    env = make_env(image_size=36, stuck_steps=5, stuck_speed=1.0)
    env.reset(seed=0)
    ends = [env.step(IDLE)[2:] for _ in range(5)]
    assert [(terminated, truncated) for terminated, truncated, _ in ends] == [(False, False)] * 4 + [(False, True)]
    assert ends[-1][2]["reason"] == "stuck"


def test_max_episode_steps_truncates() -> None:
    env = make_env(image_size=36, stuck_steps=0, max_episode_steps=3)
    env.reset(seed=0)
    ends = [env.step(IDLE)[2:] for _ in range(3)]
    assert [info["reason"] for _, _, info in ends] == [None, None, "max_steps"]
    assert ends[-1][:2] == (False, True)


def test_info_reports_reason_speed_and_tiles() -> None:
    env = make_env(image_size=36)
    _, info = env.reset(seed=0)
    assert info["reason"] is None
    assert info["tiles_total"] > 100
    for _ in range(40):
        info = env.step(np.array([0.0, 1.0], dtype=np.float32))[4]
    assert info["speed"] > 10.0
    assert info["tiles_visited"] > 2


def test_same_seed_gives_same_first_observation() -> None:
    first, _ = make_env(image_size=36, vector_obs=True).reset(seed=123)
    second, _ = make_env(image_size=36, vector_obs=True).reset(seed=123)
    np.testing.assert_array_equal(first["image"], second["image"])
    np.testing.assert_array_equal(first["vector"], second["vector"])


def test_different_seeds_give_different_tracks() -> None:
    env = make_env(image_size=36)
    env.reset(seed=1)
    first_track = np.array(env._core.track)
    env.reset(seed=2)
    assert first_track.shape != np.array(env._core.track).shape or not np.allclose(first_track, env._core.track)


def test_fast_render_matches_carracing_pixels() -> None:
    env, reference = make_env(skip_zoom=False), CarRacing(continuous=True)
    env.reset(seed=5)
    reference.reset(seed=5)
    control = np.array([0.4, 0.6, 0.0])
    reference._render = lambda mode: None  # skip drawing the zoom-in frames; the last frame is drawn by CarRacing
    for _ in range(59):  # through the zoom-in and along the track, where tiles change colour on contact
        env._core.step(control)
        reference.step(control)
    del reference._render
    env._core.step(control)
    np.testing.assert_array_equal(env._core.state_pixels(), reference.step(control)[0])


def test_render_rgb_array_returns_video_frame() -> None:
    env = CarRacingEnv(CarRacingConfig(image_size=36), render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (400, 600, 3)
    assert frame.dtype == np.uint8


def test_unknown_config_key_names_the_closest_key() -> None:
    with pytest.raises(ConfigError, match=r"'image_sise'.*did you mean 'image_size'"):
        CarRacingConfig.from_dict({"image_sise": 64})


def test_from_dict_builds_config() -> None:
    config = CarRacingConfig.from_dict({"image_size": 36, "offtrack_penalty": -5, "vector_obs": True})
    assert (config.image_size, config.offtrack_penalty, config.vector_obs) == (36, -5.0, True)
    assert isinstance(config.offtrack_penalty, float)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("image_size", 8),
        ("image_size", 128),
        ("image_size", "84"),
        ("frames", 0),
        ("grayscale", "yes"),
        ("offtrack_steps", -1),
        ("stuck_speed", float("nan")),
        ("action_repeat", 0),
        ("lap_complete_percent", 0.0),
        ("lap_complete_percent", 1.5),
        ("max_brake", 0.0),
        ("pedal", "gas"),
        ("max_brake", 1.5),
        ("image_obs", "no"),
        ("n_waypoints", -1),
        ("n_waypoints", 101),
        ("lookahead_m", 0.0),
        ("lookahead_m", 600.0),
    ],
)
def test_invalid_config_value_raises_config_error(name: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"CarRacingConfig\.{name} .*got {value!r}"):
        CarRacingConfig(**{name: value})


def test_every_config_field_has_a_default_and_help() -> None:
    for field in dataclasses.fields(CarRacingConfig):
        assert field.default is not dataclasses.MISSING, field.name
        assert field.metadata.get("help"), field.name


def test_env_rejects_a_config_of_the_wrong_type() -> None:
    with pytest.raises(ValueError, match="config must be a CarRacingConfig or None"):
        CarRacingEnv({"image_size": 36})


def test_reward_sums_carracing_rewards_over_action_repeat() -> None:
    env = make_env(image_size=36, action_repeat=3)
    env.reset(seed=0)
    frame_rewards: list[float] = []
    inner_step = env._core.step

    def step(action: np.ndarray | None) -> tuple:
        result = inner_step(action)
        frame_rewards.append(result[1])
        return result

    env._core.step = step
    reward = env.step(np.array([0.0, 1.0], dtype=np.float32))[1]
    assert len(frame_rewards) == 3
    assert reward == pytest.approx(sum(frame_rewards))


def test_offtrack_steps_zero_disables_offtrack_termination() -> None:
    env = make_env(image_size=36, vector_obs=True, offtrack_steps=0, stuck_steps=0)
    env.reset(seed=0)
    ends = [env.step(STEER_RIGHT_FULL_GAS)[2:4] for _ in range(80)]  # off the road from about step 40
    assert not any(terminated or truncated for terminated, truncated in ends)
    assert env._offtrack_count > 25


def test_leaving_the_playfield_terminates() -> None:
    env = make_env(image_size=36)
    env.reset(seed=0)
    env._core.car.hull.position = (400.0, 0.0)  # beyond CarRacing's playfield of +-333
    _, reward, terminated, truncated, info = env.step(IDLE)
    assert (terminated, truncated, info["reason"]) == (True, False, "out_of_playfield")
    assert reward == -100.0


def test_completed_lap_terminates() -> None:
    env = make_env(image_size=36)
    env.reset(seed=0)
    env._core.new_lap = True  # what CarRacing's contact listener sets on tile 0 after lap_complete_percent of tiles
    _, _, terminated, truncated, info = env.step(IDLE)
    assert (terminated, truncated, info["reason"]) == (True, False, "lap_complete")


def test_stuck_counter_waits_for_the_zoom_in_without_skip_zoom() -> None:
    env = make_env(image_size=36, skip_zoom=False, stuck_steps=5)
    env.reset(seed=0)
    truncated_at = [step for step in range(60) if env.step(IDLE)[3]]
    # Reset ran frame 1 of the 50-frame (1 s) zoom-in and steps 0-47 frames 2-49; steps 48-52 are the 5 slow steps.
    assert truncated_at[0] == 52


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ([0.3, 1.0], [0.3, 1.0, 0.0]),  # gas unchanged
        ([0.0, -1.0], [0.0, 0.0, 0.3]),  # full brake is max_brake
        ([0.0, -0.5], [0.0, 0.0, 0.15]),
    ],
)
def test_max_brake_scales_the_brake_pedal(action: list[float], expected: list[float]) -> None:
    env = make_env(image_size=36, max_brake=0.3)
    env.reset(seed=0)
    controls = capture_controls(env)
    env.step(np.array(action, dtype=np.float32))
    np.testing.assert_allclose(controls[-1], expected)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ([0.0, 1.0], [0.0, 1.0, 0.0]),
        ([0.0, -1.0], [0.0, 0.0, 0.3]),
        ([0.0, 0.0], [0.0, 0.35, 0.0]),  # the centre of a tanh actor drives
        ([0.0, -7.0 / 13.0], [0.0, 0.0, 0.0]),  # -0.3 + (a + 1) / 2 * 1.3 = 0
    ],
)
def test_linear_pedal_maps_the_action_range_onto_brake_then_gas(action: list[float], expected: list[float]) -> None:
    env = make_env(image_size=36, max_brake=0.3, pedal="linear")
    env.reset(seed=0)
    controls = capture_controls(env)
    env.step(np.array(action, dtype=np.float32))
    np.testing.assert_allclose(controls[-1], expected, atol=1e-6)


def test_uniform_random_actions_drive_faster_with_a_softer_brake() -> None:
    """Full braking half the time makes random exploration crawl; a softer brake lets it drive."""
    mean_speed = {}
    for max_brake in (1.0, 0.2):
        speeds = []
        for seed in range(3):
            env = make_env(image_obs=False, vector_obs=True, max_brake=max_brake, action_repeat=4, offtrack_steps=0,
                           stuck_steps=0)  # fmt: skip
            env.reset(seed=seed)
            rng = np.random.default_rng(seed)
            speeds += [env.step(rng.uniform(-1, 1, 2).astype(np.float32))[4]["speed"] for _ in range(60)][20:]
        mean_speed[max_brake] = float(np.mean(speeds))
    assert mean_speed[0.2] > 2 * mean_speed[1.0], mean_speed


def test_zero_gas_only_coasts_so_the_brake_is_the_only_way_to_slow_down() -> None:
    env = make_env(image_obs=False, vector_obs=True, action_repeat=4, offtrack_steps=0, stuck_steps=0, max_brake=0.3)
    env.reset(seed=0)
    for _ in range(25):
        env.step(np.array([0.0, 1.0], dtype=np.float32))
    fast = env.step(np.array([0.0, 0.0], dtype=np.float32))[4]["speed"]
    coasting = [env.step(np.array([0.0, 0.0], dtype=np.float32))[4]["speed"] for _ in range(10)][-1]
    braking = [env.step(np.array([0.0, -1.0], dtype=np.float32))[4]["speed"] for _ in range(10)][-1]
    assert coasting > 0.95 * fast and braking < 0.5 * coasting


def test_stuck_penalty_makes_stuck_a_penalised_termination() -> None:
    env = make_env(image_size=36, stuck_steps=5, stuck_speed=1.0, stuck_penalty=-30.0)
    env.reset(seed=0)
    ends = [env.step(IDLE)[1:] for _ in range(5)]
    rewards = [reward for reward, *_ in ends]
    assert [(terminated, truncated) for _, terminated, truncated, _ in ends] == [(False, False)] * 4 + [(True, False)]
    assert ends[-1][3]["reason"] == "stuck"
    assert rewards[-1] - rewards[-2] == pytest.approx(-30.0)


def test_vector_only_observation_is_the_vector_box_and_renders_nothing() -> None:
    env = make_env(image_obs=False, vector_obs=True)
    gym_check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (len(VECTOR_FIELDS),) and obs.dtype == np.float32
    env._core.state_pixels = None  # any render would now fail
    obs, *_ = env.step(IDLE)
    assert env.observation_space.contains(obs)
    assert env.frame_stack == 1


def test_vector_only_observation_equals_the_dict_vector() -> None:
    vector_env, dict_env = make_env(image_obs=False, vector_obs=True), make_env(image_size=36, vector_obs=True)
    vector_env.reset(seed=3), dict_env.reset(seed=3)
    for _ in range(10):
        vector, dict_obs = vector_env.step(STEER_RIGHT_FULL_GAS)[0], dict_env.step(STEER_RIGHT_FULL_GAS)[0]
    np.testing.assert_array_equal(vector, dict_obs["vector"])


def _distance_to_centre_line(env: CarRacingEnv, points: np.ndarray) -> np.ndarray:
    """:return: each point's distance to the closed polyline through the track's centre-line points"""
    start = env._track_xy
    end = np.roll(start, -1, axis=0)
    segment = end - start
    t = np.clip(np.einsum("psk,sk->ps", points[:, None] - start, segment) / np.sum(segment**2, axis=1), 0.0, 1.0)
    nearest = start + t[..., None] * segment
    return np.min(np.linalg.norm(points[:, None] - nearest, axis=2), axis=1)


def test_waypoints_lie_on_the_centre_line_ahead_in_the_car_frame() -> None:
    env = make_env(image_obs=False, vector_obs=True, n_waypoints=4, lookahead_m=40.0)
    gym_check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=1)
    names = vector_fields(env.config)
    assert names[: len(VECTOR_FIELDS)] == VECTOR_FIELDS and names[-2:] == ("waypoint_4_forward", "waypoint_4_right")
    assert obs.shape == (len(names),) == env.observation_space.shape
    for _ in range(25):
        obs = env.step(np.array([0.2, 0.6], dtype=np.float32))[0]
    hull = env._car.hull
    forward, right = np.array(hull.GetWorldVector((0.0, 1.0))), np.array(hull.GetWorldVector((1.0, 0.0)))
    local = obs[len(VECTOR_FIELDS) :].reshape(4, 2) * 40.0
    world = np.array(hull.position) + local[:, :1] * forward + local[:, 1:] * right
    np.testing.assert_allclose(_distance_to_centre_line(env, world), 0.0, atol=1e-3)
    # ahead of the car and 10 units apart along a track that bends gently at this scale
    assert np.all(np.diff(local[:, 0]) > 0.0) and local[0, 0] > 0.0
    np.testing.assert_allclose(np.linalg.norm(np.diff(world, axis=0), axis=1), 10.0, atol=0.3)


def test_waypoints_wrap_around_the_end_of_the_loop() -> None:
    env = make_env(image_obs=False, vector_obs=True, n_waypoints=2, lookahead_m=20.0)
    env.reset(seed=0)
    length = env._track_s[-1]
    points = env._waypoints_ahead(length - 5.0)  # 5 units before the start line: 5 and 15 units past it
    np.testing.assert_allclose(_distance_to_centre_line(env, points), 0.0, atol=1e-6)
    assert np.linalg.norm(points[0] - env._track_xy[0]) == pytest.approx(5.0, abs=0.1)
    assert np.linalg.norm(points[1] - env._track_xy[0]) == pytest.approx(15.0, abs=0.3)


def test_no_waypoints_keeps_the_seven_physics_fields() -> None:
    default = make_env(image_obs=False, vector_obs=True)
    with_waypoints = make_env(image_obs=False, vector_obs=True, n_waypoints=3)
    first, second = default.reset(seed=2)[0], with_waypoints.reset(seed=2)[0]
    assert vector_fields(default.config) == VECTOR_FIELDS
    np.testing.assert_array_equal(first, second[: len(VECTOR_FIELDS)])


def test_waypoints_without_the_vector_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="n_waypoints is 5 but vector_obs is false"):
        CarRacingConfig(n_waypoints=5)


def test_observing_nothing_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="image_obs and vector_obs are both false"):
        CarRacingConfig(image_obs=False, vector_obs=False)

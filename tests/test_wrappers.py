"""Tests for sb3_carla_td3.envs.wrappers: the driving recipe's env rules as gymnasium wrappers, and CarRacingEnv's
trajectory, which now runs on the same functions, unchanged."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, ResizeObservation
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from sb3_carla_td3.envs import (
    ActionRepeat,
    CarRacingConfig,
    CarRacingEnv,
    OffTrackTermination,
    PedalMapping,
    StreakCounter,
    StuckTermination,
    carracing_off_track,
    carracing_speed,
    pedal_control,
)

#: gymnasium's ResizeObservation needs OpenCV (the [test] extra installs opencv-python-headless).
needs_opencv = pytest.mark.skipif(
    importlib.util.find_spec("cv2") is None, reason="ResizeObservation needs opencv: pip install opencv-python-headless"
)
CARRACING_ACTIONS = spaces.Box(np.array([-1.0, 0.0, 0.0], dtype=np.float32), 1.0, dtype=np.float32)
STEER_THROTTLE_BRAKE = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)
PEDAL_GRID = [(s, a) for s in (-1.5, -0.4, 0.0, 0.7) for a in (-3.0, -1.0, -0.6, -0.1, 0.0, 0.25, 1.0, 2.0)]


class ScriptedEnv(gym.Env):
    """A one-number env that replays a script: step k reports ``speeds[k]`` and ``off_track[k]`` in its info.

    It records every action it gets, pays reward ``k + 1`` on step k and terminates after ``end_after`` steps.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012

    def __init__(
        self,
        speeds: Sequence[float] = (0.0,) * 100,
        off_track: Sequence[bool] = (False,) * 100,
        end_after: int | None = None,
        action_space: spaces.Box = STEER_THROTTLE_BRAKE,
        info_keys: tuple[str, ...] = ("speed", "off_track"),
    ) -> None:
        self.speeds, self.off_track, self.end_after, self.info_keys = list(speeds), list(off_track), end_after, info_keys
        self.action_space = action_space
        self.observation_space = spaces.Box(0.0, 1000.0, (1,), dtype=np.float32)
        self.actions: list[np.ndarray] = []
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.steps = 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.actions.append(np.array(action))
        k = self.steps
        self.steps += 1
        info = {"speed": self.speeds[k], "off_track": self.off_track[k], "step": k}
        info = {key: value for key, value in info.items() if key in (*self.info_keys, "step")}
        terminated = self.end_after is not None and self.steps >= self.end_after
        return np.array([self.steps], dtype=np.float32), float(k + 1), terminated, False, info

    @property
    def speed_now(self) -> float:
        """The speed of the last step (for callable readers)."""
        return self.speeds[self.steps - 1]


def old_carracing_control(action: Sequence[float], max_brake: float, pedal: str) -> np.ndarray:
    """CarRacingEnv.step's action arithmetic before the wrappers existed, verbatim."""
    values = np.asarray(action, dtype=np.float64)
    steer, pedal_value = np.clip(values, -1.0, 1.0).tolist()
    if pedal == "linear":
        pedal_value = -max_brake + (pedal_value + 1.0) / 2.0 * (1.0 + max_brake)
        max_brake = 1.0
    return np.array([steer, max(pedal_value, 0.0), max_brake * max(-pedal_value, 0.0)])


def run(env: gym.Env, n: int, action: Any = None) -> list[tuple[float, bool, bool, dict[str, Any]]]:
    """Reset, then step ``n`` times (or until the episode ends): ``(reward, terminated, truncated, info)`` per step."""
    env.reset(seed=0)
    action = np.zeros(2, dtype=np.float32) if action is None else action
    results = []
    for _ in range(n):
        _, reward, terminated, truncated, info = env.step(action)
        results.append((float(reward), terminated, truncated, info))
        if terminated or truncated:
            break
    return results


# ---------------------------------------------------------------------------------------------------- pedal mapping
@pytest.mark.parametrize("mode", ["split", "linear"])
@pytest.mark.parametrize("max_brake", [1.0, 0.3])
def test_pedal_control_is_carracing_envs_old_arithmetic_bit_for_bit(mode: str, max_brake: float) -> None:
    for action in PEDAL_GRID:
        steer, throttle_brake = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0).tolist()
        new = np.array(pedal_control(steer, throttle_brake, max_brake, mode))
        assert new.tobytes() == old_carracing_control(action, max_brake, mode).tobytes(), action


@pytest.mark.parametrize("mode", ["split", "linear"])
@pytest.mark.parametrize("max_brake", [1.0, 0.3])
def test_pedal_mapping_onto_carracing_steer_gas_brake(mode: str, max_brake: float) -> None:
    inner = ScriptedEnv(action_space=CARRACING_ACTIONS)
    env = PedalMapping(inner, max_brake=max_brake, mode=mode)
    env.reset(seed=0)
    for action in PEDAL_GRID:
        env.step(np.array(action))
        expected = old_carracing_control(action, max_brake, mode).astype(np.float32)
        np.testing.assert_array_equal(inner.actions[-1], expected)
        assert inner.actions[-1].dtype == np.float32 and CARRACING_ACTIONS.contains(inner.actions[-1])


@pytest.mark.parametrize("mode", ["split", "linear"])
@pytest.mark.parametrize("max_brake", [1.0, 0.3])
def test_pedal_mapping_onto_steer_throttle_brake_gives_gas_minus_brake(mode: str, max_brake: float) -> None:
    inner = ScriptedEnv(action_space=STEER_THROTTLE_BRAKE)
    env = PedalMapping(inner, max_brake=max_brake, mode=mode)
    env.reset(seed=0)
    for action in PEDAL_GRID:
        env.step(np.array(action))
        steer, gas, brake = old_carracing_control(action, max_brake, mode)
        np.testing.assert_array_equal(inner.actions[-1], np.array([steer, gas - brake], dtype=np.float32))


@pytest.mark.parametrize(
    ("mode", "action", "expected"),
    [
        ("split", [0.2, 0.5], [0.2, 0.5, 0.0]),  # gas unchanged
        ("split", [0.0, -1.0], [0.0, 0.0, 0.3]),  # full brake is max_brake
        ("linear", [0.0, 0.0], [0.0, 0.35, 0.0]),  # a tanh actor's centre: gas (1 - max_brake) / 2
        ("linear", [0.0, -1.0], [0.0, 0.0, 0.3]),
        ("linear", [0.0, 1.0], [0.0, 1.0, 0.0]),
    ],
)
def test_pedal_mapping_worked_examples(mode: str, action: list[float], expected: list[float]) -> None:
    inner = ScriptedEnv(action_space=CARRACING_ACTIONS)
    PedalMapping(inner, max_brake=0.3, mode=mode).step(np.array(action, dtype=np.float32))
    np.testing.assert_allclose(inner.actions[-1], expected, atol=1e-7)


def test_pedal_mapping_exposes_steer_throttle_brake() -> None:
    env = PedalMapping(ScriptedEnv(action_space=CARRACING_ACTIONS))
    assert env.action_space == spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)


@pytest.mark.parametrize(
    "space",
    [
        spaces.Discrete(5),
        spaces.Box(-1.0, 1.0, (4,), dtype=np.float32),
        spaces.Box(0.0, 1.0, (2,), dtype=np.float32),  # no room for the brake
        spaces.Box(0.0, 1.0, (3,), dtype=np.float32),  # steer cannot go left
    ],
)
def test_pedal_mapping_rejects_other_inner_action_spaces(space: spaces.Space) -> None:
    with pytest.raises(ValueError, match=r"needs an inner action space Box \(2,\).*got " + type(space).__name__):
        PedalMapping(ScriptedEnv(action_space=space))  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "name"), [({"max_brake": 0.0}, "max_brake"), ({"mode": "tanh"}, "mode")])
def test_pedal_mapping_rejects_bad_options(options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"PedalMapping {name} must be"):
        PedalMapping(ScriptedEnv(), **options)


@pytest.mark.parametrize("action", [[0.0], [0.0, np.nan], "gas"])
def test_pedal_mapping_rejects_bad_actions(action: Any) -> None:
    env = PedalMapping(ScriptedEnv())
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action must be a finite array of shape \(2,\)"):
        env.step(action)


# -------------------------------------------------------------------------------------------------------- stuck rule
@pytest.mark.parametrize(("penalty", "terminated", "truncated"), [(-100.0, True, False), (0.0, False, True)])
def test_stuck_ends_at_exactly_n_slow_steps(penalty: float, terminated: bool, truncated: bool) -> None:
    env = StuckTermination(ScriptedEnv(speeds=[0.5] * 20), stuck_steps=5, stuck_speed=1.0, penalty=penalty)
    results = run(env, 20)
    assert len(results) == 5
    assert [(term, trunc) for _, term, trunc, _ in results] == [(False, False)] * 4 + [(terminated, truncated)]
    assert [reward for reward, *_ in results] == [1.0, 2.0, 3.0, 4.0, 5.0 + penalty]
    assert results[-1][3]["reason"] == "stuck" and "reason" not in results[-2][3]


def test_stuck_counter_restarts_when_the_car_moves() -> None:
    speeds = [0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    env = StuckTermination(ScriptedEnv(speeds=speeds), stuck_steps=4, stuck_speed=1.0)
    results = run(env, 20)
    assert len(results) == 8 and results[-1][3]["reason"] == "stuck"  # the 4 slow steps after the move: 4-7


def test_stuck_counter_starts_over_after_reset() -> None:
    env = StuckTermination(ScriptedEnv(speeds=[0.0] * 20), stuck_steps=3)
    env.reset(seed=0)
    env.step(np.zeros(2))
    env.step(np.zeros(2))
    assert len(run(env, 20)) == 3


def test_stuck_reads_speed_from_a_callable_that_gets_the_wrapped_env() -> None:
    inner = ScriptedEnv(speeds=[0.0, 3.0, 0.0, 0.0], info_keys=())
    seen: list[gym.Env] = []

    def speed(env: gym.Env) -> float:
        seen.append(env)
        return env.unwrapped.speed_now  # type: ignore[attr-defined]

    pedals = PedalMapping(inner)
    results = run(StuckTermination(pedals, speed=speed, stuck_steps=2), 10)
    assert len(results) == 4 and results[-1][3]["reason"] == "stuck"
    assert seen and all(env is pedals for env in seen)


def test_stuck_names_the_missing_info_key_and_the_keys_found() -> None:
    env = StuckTermination(ScriptedEnv(info_keys=("off_track",)), speed="speed_mps")
    env.reset(seed=0)
    with pytest.raises(KeyError, match=r"info\['speed_mps'\].*\['off_track', 'step'\]"):
        env.step(np.zeros(2))


@pytest.mark.parametrize("wrapper", [StuckTermination, OffTrackTermination])
def test_a_positive_penalty_is_rejected_with_the_expected_sign(wrapper: type) -> None:
    with pytest.raises(ValueError, match=r"penalty must be <= 0.*got 100.0 \(pass -100.0\)"):
        wrapper(ScriptedEnv(), penalty=100.0)


@pytest.mark.parametrize(
    ("wrapper", "options", "name"),
    [
        (StuckTermination, {"stuck_steps": 0}, "stuck_steps"),
        (StuckTermination, {"stuck_speed": -1.0}, "stuck_speed"),
        (StuckTermination, {"speed": 3}, "speed"),
        (OffTrackTermination, {"offtrack_steps": 2.5}, "offtrack_steps"),
        (OffTrackTermination, {"off_track": None}, "off_track"),
        (ActionRepeat, {"repeat": 0}, "repeat"),
    ],
)
def test_bad_options_name_the_argument(wrapper: type, options: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=f"{wrapper.__name__} {name} must be"):
        wrapper(ScriptedEnv(), **options)


def test_an_episode_the_inner_env_ends_passes_through_unchanged() -> None:
    inner = ScriptedEnv(speeds=[0.0] * 10, end_after=3)
    results = run(StuckTermination(inner, stuck_steps=3), 10)
    assert results[-1][:3] == (3.0, True, False) and "reason" not in results[-1][3]


def test_an_inner_reason_is_not_overwritten() -> None:
    class Reasoned(gym.Wrapper):
        def step(self, action: Any) -> tuple:
            obs, reward, terminated, truncated, info = self.env.step(action)
            return obs, reward, terminated, truncated, {**info, "reason": "custom"}

    results = run(StuckTermination(Reasoned(ScriptedEnv()), stuck_steps=2), 10)
    assert results[-1][1] and results[-1][3]["reason"] == "custom"


# ----------------------------------------------------------------------------------------------------- off-track rule
@pytest.mark.parametrize("penalty", [-50.0, 0.0])
def test_offtrack_terminates_after_n_consecutive_off_track_steps(penalty: float) -> None:
    off_track = [False, True, True, False, True, True, True, True]
    env = OffTrackTermination(ScriptedEnv(off_track=off_track), offtrack_steps=3, penalty=penalty)
    results = run(env, 20)
    assert len(results) == 7  # steps 4, 5 and 6 off the road
    assert results[-1][:3] == (7.0 + penalty, True, False) and results[-1][3]["reason"] == "offtrack"
    assert not any(terminated or truncated for _, terminated, truncated, _ in results[:-1])


def test_streak_counter_counts_consecutive_hits_and_zero_disables() -> None:
    counter, disabled = StreakCounter(2), StreakCounter(0)
    assert [counter.update(hit) for hit in (True, False, True, True, True)] == [False, False, False, True, True]
    assert not any(disabled.update(True) for _ in range(10))
    counter.reset()
    assert counter.count == 0 and not counter.reached


# ------------------------------------------------------------------------------------------------------ action repeat
def test_action_repeat_sums_rewards_and_returns_the_last_step() -> None:
    inner = ScriptedEnv()
    env = ActionRepeat(inner, repeat=3)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.array([0.1, 0.2]))
    assert (reward, terminated, truncated, info["step"], obs[0]) == (1.0 + 2.0 + 3.0, False, False, 2, 3.0)
    assert len(inner.actions) == 3 and all(np.array_equal(a, [0.1, 0.2]) for a in inner.actions)


def test_action_repeat_stops_when_the_inner_env_ends() -> None:
    inner = ScriptedEnv(end_after=5)
    env = ActionRepeat(inner, repeat=4)
    env.reset(seed=0)
    env.step(np.zeros(2))
    _, reward, terminated, _, info = env.step(np.zeros(2))
    assert (reward, terminated, info["step"], inner.steps) == (5.0, True, 4, 5)


# ----------------------------------------------------------------------------------------------------- env checker
@pytest.mark.parametrize(
    "make",
    [
        lambda: PedalMapping(ScriptedEnv(action_space=CARRACING_ACTIONS)),
        lambda: PedalMapping(ScriptedEnv(action_space=STEER_THROTTLE_BRAKE), mode="split"),
        lambda: StuckTermination(ScriptedEnv(speeds=[0.0] * 100), stuck_steps=3),
        lambda: OffTrackTermination(ScriptedEnv(off_track=[True] * 100), offtrack_steps=3),
        lambda: ActionRepeat(ScriptedEnv(), repeat=3),
    ],
    ids=["pedal_3d", "pedal_2d", "stuck", "offtrack", "repeat"],
)
def test_gymnasium_env_checker_passes_on_each_wrapper(make: Any) -> None:
    with pytest.warns(UserWarning, match="different from the unwrapped version"):  # the checker's note on any wrapper
        check_env(make(), skip_render_check=True)


def make_carracing_recipe() -> gym.Env:
    """gymnasium's CarRacing-v3 with the whole recipe, as examples/own_env.py builds it for training."""
    env: gym.Env = ActionRepeat(gym.make("CarRacing-v3"), repeat=4)
    env = FrameStackObservation(ResizeObservation(GrayscaleObservation(env), (40, 40)), 4)
    env = PedalMapping(env, max_brake=0.3, mode="linear")
    env = StuckTermination(env, speed=carracing_speed, stuck_steps=50, penalty=-100.0)
    return OffTrackTermination(env, off_track=carracing_off_track, offtrack_steps=10, penalty=-100.0)


@needs_opencv
def test_the_recipe_on_gymnasiums_carracing_passes_the_env_checker_and_stacks_channel_first() -> None:
    env = make_carracing_recipe()
    with pytest.warns(UserWarning, match="different from the unwrapped version"):
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (4, 40, 40) and obs.dtype == np.uint8
    for _ in range(3):
        obs, _, terminated, truncated, _ = env.step(np.array([0.0, 1.0], dtype=np.float32))
    assert obs.shape == (4, 40, 40) and not (terminated or truncated)
    assert carracing_speed(env) > 0.0 and not carracing_off_track(env)


@needs_opencv
def test_the_recipe_composes_with_sb3s_vec_frame_stack() -> None:
    def make() -> gym.Env:
        env: gym.Env = ActionRepeat(gym.make("CarRacing-v3"), repeat=4)
        env = ResizeObservation(GrayscaleObservation(env, keep_dim=True), (40, 40))
        env = StuckTermination(PedalMapping(env), speed=carracing_speed, stuck_steps=50)
        return OffTrackTermination(env, off_track=carracing_off_track)

    venv = VecFrameStack(DummyVecEnv([make]), n_stack=4)
    obs = venv.reset()
    assert obs.shape == (1, 40, 40, 4) and obs.dtype == np.uint8
    for _ in range(3):
        obs, rewards, dones, _ = venv.step(np.array([[0.0, 1.0]], dtype=np.float32))
    assert obs.shape == (1, 40, 40, 4) and rewards.shape == dones.shape == (1,)
    venv.close()


def test_carracing_readers_need_a_reset_carracing() -> None:
    env = gym.make("CarRacing-v3")
    with pytest.raises(RuntimeError, match=r"no car before reset\(\)"):
        carracing_speed(env)
    env.reset(seed=0)
    assert carracing_speed(env) == 0.0 and carracing_off_track(env) is False
    with pytest.raises(TypeError, match="expected gymnasium's CarRacing"):
        carracing_off_track(ScriptedEnv())


# ------------------------------------------------------------------------------ CarRacingEnv: unchanged by the refactor
#: Two configs that between them exercise both pedal mappings, action repeat, and every episode end but the rare ones.
TRAJECTORY_CONFIGS: dict[str, dict[str, Any]] = {
    "linear": dict(
        image_size=36,
        vector_obs=True,
        pedal="linear",
        max_brake=0.3,
        action_repeat=2,
        offtrack_steps=5,
        offtrack_penalty=-50.0,
        stuck_steps=8,
        stuck_penalty=-20.0,
        max_episode_steps=45,
    ),
    "split": dict(image_size=36, offtrack_steps=4, stuck_steps=6, max_episode_steps=14, max_brake=0.5, action_repeat=3),
}
#: Computed with CarRacingEnv as it was before it used the wrappers' functions (commit 82cdd73).
TRAJECTORY_DIGESTS = {
    "linear": "b6b7119c9fba210f2439c73ce82529346a833cc901219c97910dce459162bd6e",
    "split": "0e66cf7cc7b9139f047ad66278bee989539525d24766c3c088b7324f75ac2b01",
}
TRAJECTORY_ENDS = {
    "linear": [(7, "stuck", True, False), (36, "offtrack", True, False)],
    "split": [(5, "stuck", False, True), (11, "stuck", False, True)] + [(k, "max_steps", False, True) for k in (25, 39, 53)],
}


def trajectory_actions(n: int = 60) -> list[np.ndarray]:
    """12 steps of full brake (stuck), 30 of full right and full gas (off the road), then uniform random actions."""
    rng = np.random.default_rng(0)
    actions = [np.array([0.0, -1.0])] * 12 + [np.array([1.0, 1.0])] * 30
    actions += [rng.uniform(-1, 1, 2) for _ in range(n - len(actions))]
    return [action.astype(np.float32) for action in actions]


def carracing_trajectory(options: dict[str, Any]) -> tuple[str, list[tuple[int, str, bool, bool]]]:
    """Run CarRacingEnv from seed 0 over the fixed actions, resetting at each end.

    :return: a sha256 of every observation, reward, flag and info, and the episode ends
        ``(step, reason, terminated, truncated)``
    """
    env = CarRacingEnv(CarRacingConfig(**options))
    digest = hashlib.sha256()

    def add(obs: Any) -> None:
        for part in obs.values() if isinstance(obs, dict) else [obs]:
            digest.update(np.ascontiguousarray(part).tobytes())

    add(env.reset(seed=0)[0])
    ends = []
    for k, action in enumerate(trajectory_actions()):
        obs, reward, terminated, truncated, info = env.step(action)
        add(obs)
        digest.update(np.float64(reward).tobytes())
        digest.update(bytes([terminated, truncated]))
        digest.update(repr(info).encode())
        if terminated or truncated:
            ends.append((k, info["reason"], terminated, truncated))
            add(env.reset()[0])
    return digest.hexdigest(), ends


@pytest.mark.parametrize("name", sorted(TRAJECTORY_CONFIGS))
def test_carracing_env_trajectory_is_unchanged(name: str) -> None:
    digest, ends = carracing_trajectory(TRAJECTORY_CONFIGS[name])
    assert ends == TRAJECTORY_ENDS[name]
    assert digest == TRAJECTORY_DIGESTS[name]

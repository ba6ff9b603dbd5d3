"""Tests for sb3_carla_td3.buffers: exact equivalence with SB3's replay buffers, wrap-around, loud failures, memory."""

from __future__ import annotations

import pickle
from copy import deepcopy
from typing import Any
from unittest import mock

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecFrameStack

from sb3_carla_td3.buffers import DictFrameStackReplayBuffer, FrameStackReplayBuffer

FRAMES = 4
CHANNELS = 2
ACTION_DIM = 2


class CounterImageEnv(gym.Env):
    """Tiny channel-first image env whose every frame is distinct: pixels encode a step counter.

    Episodes follow ``schedule`` (cycled): ``(length, truncated)`` ends the episode after ``length`` steps by
    truncation (time limit) when ``truncated`` else by termination.

    :param env_id: makes frames of different envs differ
    :param schedule: episode lengths and how each episode ends
    :param dict_obs: return ``{"image": ..., "vec": ...}`` instead of the image alone
    """

    def __init__(self, env_id: int, schedule: list[tuple[int, bool]], dict_obs: bool = False) -> None:
        image = spaces.Box(0, 255, (CHANNELS, 9, 10), np.uint8)
        vec = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.observation_space = spaces.Dict({"image": image, "vec": vec}) if dict_obs else image
        self.action_space = spaces.Box(-1, 1, (ACTION_DIM,), np.float32)
        self.env_id, self.schedule, self.dict_obs = env_id, schedule, dict_obs
        self.counter, self.episode, self.t = 0, -1, 0

    def _obs(self) -> np.ndarray | dict[str, np.ndarray]:
        v = self.counter
        frame = np.full((CHANNELS, 9, 10), 1 + self.env_id, dtype=np.uint8)
        frame[:, 0, 0], frame[:, 0, 1] = v % 256, v // 256
        frame[1, 1, :] = (7 * v + 31 * self.env_id) % 251
        if not self.dict_obs:
            return frame
        return {"image": frame, "vec": np.array([v, self.env_id, self.t], dtype=np.float32) / 7}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        self.counter, self.episode, self.t = self.counter + 1, self.episode + 1, 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        self.counter, self.t = self.counter + 1, self.t + 1
        length, truncated = self.schedule[self.episode % len(self.schedule)]
        end = self.t >= length
        return self._obs(), float(self.counter) / 3 + float(action[0]), end and not truncated, end and truncated, {}


def make_venv(schedules: list[list[tuple[int, bool]]], dict_obs: bool = False, stack: bool = True) -> VecEnv:
    venv = DummyVecEnv([lambda i=i, s=s: CounterImageEnv(i, s, dict_obs) for i, s in enumerate(schedules)])
    return VecFrameStack(venv, FRAMES) if stack else venv


def record(venv: VecEnv, n_steps: int, buffers: list[ReplayBuffer], reset_at: int | None = None) -> None:
    """Drive ``venv`` with random actions and add every transition to each buffer, as SB3's ``_store_transition`` does.

    :param venv: the (frame-stacked) env
    :param n_steps: number of vectorized steps
    :param buffers: buffers to fill
    :param reset_at: step at which to call ``venv.reset()`` mid-episode (like ``learn(reset_num_timesteps=True)``)
    """
    rng = np.random.default_rng(0)
    obs = venv.reset()
    for step in range(n_steps):
        if step == reset_at:
            obs = venv.reset()
        actions = rng.uniform(-1, 1, (venv.num_envs, ACTION_DIM)).astype(np.float32)
        new_obs, rewards, dones, infos = venv.step(actions)
        next_obs = deepcopy(new_obs)
        for i, done in enumerate(dones):
            if done:
                if isinstance(next_obs, dict):
                    for key in next_obs:
                        next_obs[key][i] = infos[i]["terminal_observation"][key]
                else:
                    next_obs[i] = infos[i]["terminal_observation"]
        for buffer in buffers:
            buffer.add(obs, next_obs, actions, rewards, dones, infos)
        obs = new_obs


def sb3_samples(buffer: ReplayBuffer, batch_inds: np.ndarray, env_indices: np.ndarray) -> Any:
    """SB3's own ``_get_samples`` at fixed env indices (it draws them with one ``np.random.randint`` call)."""
    with mock.patch.object(np.random, "randint", return_value=env_indices):
        return buffer._get_samples(batch_inds)


def all_sampleable(buffer: FrameStackReplayBuffer | DictFrameStackReplayBuffer) -> tuple[np.ndarray, np.ndarray]:
    batch_inds, env_indices = np.nonzero(buffer.sampleable_mask())
    return batch_inds, env_indices


def assert_same(expected: Any, actual: Any) -> None:
    if isinstance(expected, dict):
        assert list(expected) == list(actual)
        for key in expected:
            assert_same(expected[key], actual[key])
        return
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    assert th.equal(actual, expected)


def assert_equivalent(sb3: ReplayBuffer, ours: FrameStackReplayBuffer | DictFrameStackReplayBuffer) -> None:
    batch_inds, env_indices = all_sampleable(ours)
    expected = sb3_samples(sb3, batch_inds, env_indices)
    actual = ours._get_samples(batch_inds, env_indices=env_indices)
    for field in ("observations", "next_observations", "actions", "rewards", "dones"):
        assert_same(getattr(expected, field), getattr(actual, field))


MIXED = [(5, False), (7, True), (3, False), (9, True)]  # terminations and truncations, some shorter than FRAMES
OTHER = [(6, True), (4, False), (8, False)]


def test_box_samples_match_sb3_single_env() -> None:
    sb3 = ReplayBuffer(200, make_venv([MIXED]).observation_space, spaces.Box(-1, 1, (ACTION_DIM,)), "cpu")
    ours = FrameStackReplayBuffer(200, sb3.observation_space, sb3.action_space, "cpu", frames=FRAMES)
    record(make_venv([MIXED]), 120, [sb3, ours])
    assert ours.sampleable_mask().all() and ours.size() == sb3.size() == 120
    assert_equivalent(sb3, ours)


def test_box_samples_match_sb3_two_envs() -> None:
    venv = make_venv([MIXED, OTHER])
    sb3 = ReplayBuffer(300, venv.observation_space, venv.action_space, "cpu", n_envs=2)
    ours = FrameStackReplayBuffer(300, venv.observation_space, venv.action_space, "cpu", n_envs=2, frames=FRAMES)
    record(venv, 110, [sb3, ours])
    assert ours.sampleable_mask().all()
    assert_equivalent(sb3, ours)


def test_box_samples_match_sb3_after_wrap_around() -> None:
    venv = make_venv([MIXED, OTHER])
    sb3 = ReplayBuffer(64, venv.observation_space, venv.action_space, "cpu", n_envs=2)
    ours = FrameStackReplayBuffer(64, venv.observation_space, venv.action_space, "cpu", n_envs=2, frames=FRAMES)
    record(venv, 150, [sb3, ours])
    assert ours.full and ours.pos == sb3.pos
    # The ring (32 + frames + 1 slots per env) cannot also hold the boundary frames of every short episode:
    # only the oldest few transitions may be lost, never the recent ones.
    mask = ours.sampleable_mask()
    recent = np.arange(ours.pos - 20, ours.pos) % ours.buffer_size
    assert mask[recent].all() and mask.sum() >= 50
    assert_equivalent(sb3, ours)


def test_unsampleable_transitions_are_the_oldest_and_never_sampled() -> None:
    venv = make_venv([[(2, False), (1, True)]])  # 1-2 step episodes: up to 2 frames written per transition
    sb3 = ReplayBuffer(32, venv.observation_space, venv.action_space, "cpu")
    ours = FrameStackReplayBuffer(32, venv.observation_space, venv.action_space, "cpu", frames=FRAMES)
    record(venv, 100, [sb3, ours])
    mask = ours.sampleable_mask()[:, 0]
    chronological = mask[(np.arange(32) + ours.pos) % 32]
    n_lost = int((~chronological).sum())
    assert 0 < n_lost < 32 and not chronological[:n_lost].any() and chronological[n_lost:].all()
    valid = sb3_samples(sb3, np.nonzero(mask)[0], np.zeros(int(mask.sum()), dtype=int))
    allowed = {
        (o.numpy().tobytes(), n.numpy().tobytes()) for o, n in zip(valid.observations, valid.next_observations, strict=True)
    }
    batch = ours.sample(300)
    assert all(
        (o.numpy().tobytes(), n.numpy().tobytes()) in allowed
        for o, n in zip(batch.observations, batch.next_observations, strict=True)
    )


def test_dict_samples_match_sb3_two_envs_with_wrap_around() -> None:
    venv = make_venv([MIXED, OTHER], dict_obs=True)
    sb3 = DictReplayBuffer(80, venv.observation_space, venv.action_space, "cpu", n_envs=2)
    ours = DictFrameStackReplayBuffer(80, venv.observation_space, venv.action_space, "cpu", n_envs=2, frames=FRAMES)
    record(venv, 130, [sb3, ours])
    assert ours.full and ours.sampleable_mask().sum() >= 60
    assert_equivalent(sb3, ours)


def test_dict_samples_match_sb3_before_wrap_around() -> None:
    venv = make_venv([MIXED], dict_obs=True)
    sb3 = DictReplayBuffer(100, venv.observation_space, venv.action_space, "cpu")
    ours = DictFrameStackReplayBuffer(100, venv.observation_space, venv.action_space, "cpu", frames=FRAMES)
    record(venv, 60, [sb3, ours])
    assert ours.sampleable_mask().all()
    assert_equivalent(sb3, ours)


def assert_n_step_equivalent(sb3: NStepReplayBuffer, ours: FrameStackReplayBuffer) -> None:
    batch_inds, env_indices = all_sampleable(ours)
    expected = sb3_samples(sb3, batch_inds, env_indices)
    actual = ours._get_samples(batch_inds, env_indices=env_indices)
    for field in ("observations", "next_observations", "actions", "rewards", "dones", "discounts"):
        assert_same(getattr(expected, field), getattr(actual, field))
    assert th.unique(actual.discounts).numel() > 1  # windows cut short by episode ends beside whole ones


@pytest.mark.parametrize("n_steps", [2, 3, 6])
def test_n_step_box_samples_match_sb3_n_step_buffer_with_wrap_around(n_steps: int) -> None:
    venv = make_venv([MIXED, OTHER])  # episodes of 3-9 steps: windows end at terminations, truncations and the newest
    sb3 = NStepReplayBuffer(64, venv.observation_space, venv.action_space, "cpu", n_envs=2, n_steps=n_steps, gamma=0.9)
    ours = FrameStackReplayBuffer(
        64, venv.observation_space, venv.action_space, "cpu", n_envs=2, frames=FRAMES, n_steps=n_steps, gamma=0.9
    )
    record(venv, 150, [sb3, ours])
    assert ours.full and ours.pos == sb3.pos
    assert_n_step_equivalent(sb3, ours)


def test_n_step_box_samples_match_sb3_before_wrap_around() -> None:
    venv = make_venv([MIXED])
    sb3 = NStepReplayBuffer(100, venv.observation_space, venv.action_space, "cpu", n_steps=3, gamma=0.9)
    ours = FrameStackReplayBuffer(100, sb3.observation_space, sb3.action_space, "cpu", frames=FRAMES, n_steps=3, gamma=0.9)
    record(venv, 60, [sb3, ours])
    assert_n_step_equivalent(sb3, ours)


def test_n_step_dict_samples_match_the_box_buffer_and_keep_the_window_end_vector() -> None:
    """SB3 has no n-step Dict buffer: the image, rewards, dones and discounts must equal the n-step Box samples of the
    same episodes, and each next vector must belong to the same step as its next image (both encode the counter)."""
    box_venv, dict_venv = make_venv([MIXED, OTHER]), make_venv([MIXED, OTHER], dict_obs=True)
    box = FrameStackReplayBuffer(
        64, box_venv.observation_space, box_venv.action_space, "cpu", n_envs=2, frames=FRAMES, n_steps=3, gamma=0.9
    )
    ours = DictFrameStackReplayBuffer(
        64, dict_venv.observation_space, dict_venv.action_space, "cpu", n_envs=2, frames=FRAMES, n_steps=3, gamma=0.9
    )
    record(box_venv, 150, [box])
    record(dict_venv, 150, [ours])
    batch_inds, env_indices = all_sampleable(ours)
    expected = box._get_samples(batch_inds, env_indices=env_indices)
    actual = ours._get_samples(batch_inds, env_indices=env_indices)
    assert_same(expected.observations, actual.observations["image"])
    assert_same(expected.next_observations, actual.next_observations["image"])
    for field in ("actions", "rewards", "dones", "discounts"):
        assert_same(getattr(expected, field), getattr(actual, field))
    newest = actual.next_observations["image"][:, -CHANNELS].long()
    counter = newest[:, 0, 0] + 256 * newest[:, 0, 1]
    assert th.equal(th.round(actual.next_observations["vec"][:, -3] * 7).long(), counter)  # VecFrameStack: newest last
    one_step = DictFrameStackReplayBuffer(64, dict_venv.observation_space, dict_venv.action_space, "cpu", n_envs=2)
    record(make_venv([MIXED, OTHER], dict_obs=True), 150, [one_step])
    plain = one_step._get_samples(batch_inds, env_indices=env_indices)
    assert plain.discounts is None and not th.equal(plain.next_observations["vec"], actual.next_observations["vec"])


@pytest.mark.parametrize(("n_steps", "gamma"), [(0, 0.99), (2.5, 0.99), (True, 0.99), (3, 0.0), (3, 1.5)])
def test_invalid_n_step_arguments_raise(n_steps: Any, gamma: float) -> None:
    space = make_venv([MIXED]).observation_space
    with pytest.raises(ValueError, match=r"n_steps must be an int >= 1|gamma must be in"):
        FrameStackReplayBuffer(10, space, spaces.Box(-1, 1, (ACTION_DIM,)), "cpu", frames=FRAMES, n_steps=n_steps, gamma=gamma)


def test_reset_without_done_starts_a_new_segment() -> None:
    venv = make_venv([OTHER, MIXED])
    sb3 = ReplayBuffer(200, venv.observation_space, venv.action_space, "cpu", n_envs=2)
    ours = FrameStackReplayBuffer(200, venv.observation_space, venv.action_space, "cpu", n_envs=2, frames=FRAMES)
    record(venv, 60, [sb3, ours], reset_at=23)
    assert_equivalent(sb3, ours)


def test_single_frame_observation_matches_sb3() -> None:
    venv = make_venv([MIXED], stack=False)  # frames=1: the buffer stores each observation once
    sb3 = ReplayBuffer(100, venv.observation_space, venv.action_space, "cpu")
    ours = FrameStackReplayBuffer(100, venv.observation_space, venv.action_space, "cpu", frames=1)
    record(venv, 40, [sb3, ours])
    assert_equivalent(sb3, ours)


def test_pickled_buffer_gives_the_same_samples() -> None:
    venv = make_venv([MIXED], dict_obs=True)
    ours = DictFrameStackReplayBuffer(50, venv.observation_space, venv.action_space, "cpu", frames=FRAMES)
    record(venv, 70, [ours])
    clone = pickle.loads(pickle.dumps(ours))  # what SB3's save_replay_buffer / load_replay_buffer do
    batch_inds, env_indices = all_sampleable(ours)
    expected = ours._get_samples(batch_inds, env_indices=env_indices)
    actual = clone._get_samples(batch_inds, env_indices=env_indices)
    assert_same(expected.observations, actual.observations)
    assert_same(expected.next_observations, actual.next_observations)


def test_truncation_keeps_final_observation_and_zero_done() -> None:
    venv = make_venv([[(6, True)]])
    ours = FrameStackReplayBuffer(50, venv.observation_space, venv.action_space, "cpu", frames=FRAMES)
    record(venv, 6, [ours])
    last = ours._get_samples(np.array([5]), env_indices=np.array([0]))
    assert ours.dones[5, 0] == 1 and ours.timeouts[5, 0] == 1 and last.dones.item() == 0
    assert last.next_observations[0, -CHANNELS:].any()  # the true final frame, not the next episode's zero padding
    assert th.equal(last.next_observations[0, :-CHANNELS], last.observations[0, CHANNELS:])


def test_samples_have_sb3_dtypes_and_shapes() -> None:
    venv = make_venv([MIXED], dict_obs=True)
    ours = DictFrameStackReplayBuffer(100, venv.observation_space, venv.action_space, "cpu", frames=FRAMES)
    record(venv, 30, [ours])
    batch = ours.sample(16)
    assert batch.observations["image"].dtype == th.uint8 and batch.observations["image"].shape == (
        16,
        FRAMES * CHANNELS,
        9,
        10,
    )
    assert batch.next_observations["vec"].dtype == th.float32 and batch.next_observations["vec"].shape == (16, 3 * FRAMES)
    assert batch.actions.shape == (16, ACTION_DIM) and batch.rewards.shape == batch.dones.shape == (16, 1)
    assert batch.rewards.dtype == batch.dones.dtype == th.float32


def test_non_frame_stack_observation_raises() -> None:
    venv = make_venv([MIXED], stack=False)  # plain images with 2 channels, declared as 2 frames of 1 channel
    ours = FrameStackReplayBuffer(50, venv.observation_space, venv.action_space, "cpu", frames=2)
    with pytest.raises(ValueError, match="not a frame stack with frames=2"):
        record(venv, 3, [ours])


def test_wrong_frame_count_raises() -> None:
    venv = make_venv([MIXED])  # 4 frames of 2 channels, declared as 8 frames of 1 channel
    ours = FrameStackReplayBuffer(50, venv.observation_space, venv.action_space, "cpu", frames=8)
    with pytest.raises(ValueError, match="not a frame stack with frames=8"):
        record(venv, 3, [ours])


@pytest.mark.parametrize("frames", [3, 0, True, 2.0])
def test_invalid_frames_argument_raises(frames: Any) -> None:
    space = spaces.Box(0, 255, (8, 9, 10), np.uint8)
    with pytest.raises(ValueError, match="frames"):
        FrameStackReplayBuffer(50, space, spaces.Box(-1, 1, (2,)), frames=frames)


def test_non_uint8_image_space_raises() -> None:
    space = spaces.Box(0, 1, (8, 9, 10), np.float32)
    with pytest.raises(ValueError, match="3-D uint8 Box"):
        FrameStackReplayBuffer(50, space, spaces.Box(-1, 1, (2,)), frames=4)


def test_optimize_memory_usage_raises() -> None:
    space = spaces.Box(0, 255, (8, 9, 10), np.uint8)
    with pytest.raises(ValueError, match="optimize_memory_usage"):
        FrameStackReplayBuffer(50, space, spaces.Box(-1, 1, (2,)), optimize_memory_usage=True, frames=4)


def test_reset_empties_the_buffer() -> None:
    venv = make_venv([MIXED])
    ours = FrameStackReplayBuffer(50, venv.observation_space, venv.action_space, "cpu", frames=FRAMES)
    record(venv, 20, [ours])
    ours.reset()
    assert ours.size() == 0 and ours.pos == 0 and not ours.full
    with pytest.raises(ValueError, match="empty"):
        ours.sample(4)


def test_dict_memory_is_at_least_7_5_times_smaller_than_sb3() -> None:
    space = spaces.Dict(
        {"image": spaces.Box(0, 255, (4, 84, 84), np.uint8), "vec": spaces.Box(-np.inf, np.inf, (53,), np.float32)}
    )
    n = 6400
    ours = DictFrameStackReplayBuffer(n, space, spaces.Box(-1, 1, (2,), np.float32), "cpu", frames=4)
    # SB3's DictReplayBuffer: obs and next_obs of every key, float32 actions, rewards, dones and timeouts
    sb3_bytes = 2 * (4 * 84 * 84 + 53 * 4) + 2 * 4 + 3 * 4
    assert sb3_bytes / (ours.nbytes / n) >= 7.5
    assert ours.bytes_per_transition * 1_000_000 <= 7.5e9


class FlattenDict(BaseFeaturesExtractor):
    """Concatenate every key, flattened: keeps the TD3 run tiny (images this small cannot go through NatureCNN)."""

    def __init__(self, observation_space: spaces.Dict) -> None:
        super().__init__(observation_space, sum(int(np.prod(s.shape)) for s in observation_space.spaces.values()))

    def forward(self, observations: dict[str, th.Tensor]) -> th.Tensor:
        return th.cat([v.flatten(1).float() for v in observations.values()], dim=1)


@pytest.mark.parametrize("dict_obs", [False, True])
def test_td3_trains_with_the_buffer_as_replay_buffer_class(dict_obs: bool) -> None:
    buffer_class = DictFrameStackReplayBuffer if dict_obs else FrameStackReplayBuffer
    policy_kwargs: dict[str, Any] = {"net_arch": [16]}
    if dict_obs:
        policy_kwargs["features_extractor_class"] = FlattenDict
    model = TD3(
        "MultiInputPolicy" if dict_obs else "MlpPolicy",
        make_venv([MIXED, OTHER], dict_obs=dict_obs),
        buffer_size=200,
        learning_starts=40,
        batch_size=16,
        policy_kwargs=policy_kwargs,
        replay_buffer_class=buffer_class,
        replay_buffer_kwargs={"frames": FRAMES},
        seed=0,
    )
    model.learn(80)
    assert isinstance(model.replay_buffer, buffer_class) and model.replay_buffer.pos == 40
    assert model._n_updates > 0


def test_td3cnn_picks_the_frame_buffer_for_vec_frame_stack():
    from stable_baselines3.common.envs import FakeImageEnv
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    from sb3_carla_td3.td3_cnn import TD3CNN

    def make() -> FakeImageEnv:
        return FakeImageEnv(screen_height=36, screen_width=36, n_channels=1, discrete=False)

    env = VecFrameStack(DummyVecEnv([make]), 4)
    tiny = {"net_arch": [8], "features_extractor_kwargs": {"cnn": "nature", "rnn": None, "cnn_features": 8}}
    model = TD3CNN("CnnPolicy", env, buffer_size=100, learning_starts=10, batch_size=4, policy_kwargs=tiny)
    assert isinstance(model.replay_buffer, FrameStackReplayBuffer) and model.replay_buffer.frames == 4
    model.learn(20)  # transitions from VecFrameStack pass the buffer's frame-stack check
    sb3 = TD3CNN("CnnPolicy", env, buffer_size=100, replay_buffer="sb3", policy_kwargs=tiny)
    assert type(sb3.replay_buffer).__name__ == "ReplayBuffer"

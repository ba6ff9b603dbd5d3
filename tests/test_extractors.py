"""Tests for sb3_carla_td3.extractors: shapes, gradient flow, frame order, Dict spaces, validation, plain SB3 TD3."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.envs import FakeImageEnv

from sb3_carla_td3.extractors import CnnGruExtractor, count_parameters, min_image_size

MODES = [("pooled", "gru"), ("pooled", "lstm"), ("pooled", None), ("nature", "gru"), ("nature", "lstm"), ("nature", None)]


def image_space(channels: int = 4, size: int = 36) -> spaces.Box:
    return spaces.Box(low=0, high=255, shape=(channels, size, size), dtype=np.uint8)


def make_extractor(space: spaces.Space, **kwargs: Any) -> CnnGruExtractor:
    th.manual_seed(0)
    options = {"cnn_features": 16, "rnn_hidden": 8, **kwargs}
    return CnnGruExtractor(space, **options)


def expected_image_features(rnn: str | None, cnn_features: int = 16, rnn_hidden: int = 8) -> int:
    return cnn_features if rnn is None else rnn_hidden


class DictImageEnv(gym.Env):
    """Tiny env with a Dict observation: a (4, 36, 36) uint8 frame stack under "image" and two vectors."""

    def __init__(self) -> None:
        super().__init__()
        self.observation_space = spaces.Dict(
            {
                "image": image_space(4, 36),
                "speed": spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32),
                "waypoints": spaces.Box(-1.0, 1.0, shape=(6,), dtype=np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self._steps = 0
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self._steps += 1
        return self.observation_space.sample(), float(self.np_random.normal()), False, self._steps >= 20, {}


def critic_extractor_params(model: TD3) -> dict[str, th.Tensor]:
    return {name: p.detach().clone() for name, p in model.critic.features_extractor.named_parameters()}


# --- shapes ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cnn", "rnn"), MODES)
@pytest.mark.parametrize("size", [36, 64])
def test_output_shape(cnn: str, rnn: str | None, size: int) -> None:
    extractor = make_extractor(image_space(4, size), cnn=cnn, rnn=rnn)
    features = extractor(th.rand(3, 4, size, size))
    assert features.shape == (3, expected_image_features(rnn))
    assert extractor.features_dim == expected_image_features(rnn)


@pytest.mark.parametrize(("cnn", "rnn"), [("pooled", "gru"), ("pooled", None), ("nature", "gru"), ("nature", None)])
@pytest.mark.parametrize("size", [84, 96])
def test_output_shape_large_forward_only(cnn: str, rnn: str | None, size: int) -> None:
    extractor = make_extractor(image_space(4, size), cnn=cnn, rnn=rnn)
    with th.no_grad():
        features = extractor(th.rand(2, 4, size, size))
    assert features.shape == (2, expected_image_features(rnn))


@pytest.mark.parametrize(
    ("cnn", "size", "n_flatten"),
    [("pooled", 84, 3136), ("pooled", 64, 1600), ("pooled", 96, 5184), ("nature", 84, 3136), ("nature", 64, 1024)],
)
def test_flatten_size_is_computed(cnn: str, size: int, n_flatten: int) -> None:
    extractor = make_extractor(image_space(4, size), cnn=cnn)
    assert extractor.cnn.n_flatten == n_flatten


def test_default_is_pooled_gru_48_over_512_cnn_features() -> None:
    extractor = CnnGruExtractor(image_space(4, 84))
    assert extractor.features_dim == 48
    assert isinstance(extractor.rnn, th.nn.GRU)
    assert (extractor.rnn.input_size, extractor.rnn.hidden_size) == (512, 48)
    assert extractor.cnn.n_flatten == 3136
    assert any(isinstance(m, th.nn.MaxPool2d) for m in extractor.cnn.modules())


@pytest.mark.parametrize(("rnn", "cnn_in_channels"), [("gru", 1), ("lstm", 1), (None, 4)])
def test_cnn_reads_one_frame_or_the_whole_stack(rnn: str | None, cnn_in_channels: int) -> None:
    extractor = make_extractor(image_space(4, 36), rnn=rnn)
    assert extractor.cnn.convs[0].in_channels == cnn_in_channels


@pytest.mark.parametrize(("rnn", "features_dim"), [("gru", 8), ("lstm", 8), (None, 16)])
def test_rgb_stack(rnn: str | None, features_dim: int) -> None:
    extractor = make_extractor(image_space(12, 36), rnn=rnn)
    assert extractor.channels_per_frame == 3
    assert extractor(th.rand(2, 12, 36, 36)).shape == (2, features_dim)


@pytest.mark.parametrize(("cnn", "rnn"), MODES)
def test_zero_frames_give_finite_features(cnn: str, rnn: str | None) -> None:
    extractor = make_extractor(image_space(4, 36), cnn=cnn, rnn=rnn)
    assert th.isfinite(extractor(th.zeros(2, 4, 36, 36))).all()


# --- gradient flow --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cnn", "rnn"), [("pooled", "gru"), ("pooled", "lstm"), ("nature", "gru"), ("pooled", None)])
def test_loss_reaches_every_parameter(cnn: str, rnn: str | None) -> None:
    extractor = make_extractor(image_space(4, 36), cnn=cnn, rnn=rnn)
    features = extractor(th.rand(4, 4, 36, 36))
    (features * th.randn_like(features)).sum().backward()
    missing = [name for name, p in extractor.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# --- frame order ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rnn", "channels"), [("gru", 1), ("gru", 3), ("lstm", 1)])
def test_rnn_steps_are_frames_oldest_to_newest(rnn: str, channels: int) -> None:
    extractor = make_extractor(image_space(4 * channels, 36), rnn=rnn)
    seen: list[th.Tensor] = []
    extractor.rnn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    images = th.rand(2, 4 * channels, 36, 36)
    with th.no_grad():
        extractor(images)
        expected = th.stack([extractor.cnn(images[:, t * channels : (t + 1) * channels]) for t in range(4)], dim=1)
    assert seen[0].shape == (2, 4, 16)
    th.testing.assert_close(seen[0], expected)


def test_only_newest_frame_nonzero_reaches_last_rnn_step() -> None:
    extractor = make_extractor(image_space(4, 36))
    seen: list[th.Tensor] = []
    extractor.rnn.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    images = th.zeros(1, 4, 36, 36)
    images[:, 3] = th.rand(36, 36)  # VecFrameStack puts the newest frame in the last channels
    with th.no_grad():
        extractor(images)
        blank = extractor.cnn(th.zeros(1, 1, 36, 36))
    steps = seen[0][0]
    th.testing.assert_close(steps[:3], blank.expand(3, -1))
    assert not th.allclose(steps[3], blank[0])


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_features_equal_rnn_final_hidden_state(rnn: str) -> None:
    extractor = make_extractor(image_space(4, 36), rnn=rnn)
    images = th.rand(2, 4, 36, 36)
    with th.no_grad():
        sequence = th.stack([extractor.cnn(images[:, t : t + 1]) for t in range(4)], dim=1)
        outputs, _ = extractor.rnn(sequence)
        th.testing.assert_close(extractor(images), outputs[:, -1])


def test_reversing_frames_changes_gru_features() -> None:
    extractor = make_extractor(image_space(4, 36))
    images = th.rand(2, 4, 36, 36)
    with th.no_grad():
        assert not th.allclose(extractor(images), extractor(images.flip(1)))


# --- Dict observations ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("vector_mlp", "vector_features"), [(None, 7), ([32], 32), ([32, 5], 5)])
def test_dict_space_features_dim(vector_mlp: list[int] | None, vector_features: int) -> None:
    space = DictImageEnv().observation_space
    extractor = make_extractor(space, vector_mlp=vector_mlp)
    observation = {"image": th.rand(3, 4, 36, 36), "speed": th.rand(3, 1), "waypoints": th.rand(3, 6)}
    assert extractor.features_dim == 8 + vector_features
    assert extractor(observation).shape == (3, 8 + vector_features)


def test_dict_vectors_follow_image_features_in_sorted_key_order() -> None:
    extractor = make_extractor(DictImageEnv().observation_space)
    observation = {"image": th.rand(2, 4, 36, 36), "speed": th.rand(2, 1), "waypoints": th.rand(2, 6)}
    features = extractor(observation)
    assert extractor.vector_keys == ("speed", "waypoints")
    th.testing.assert_close(features[:, 8:], th.cat([observation["speed"], observation["waypoints"]], dim=1))


@pytest.mark.parametrize(("vector_mlp", "vector_params"), [(None, 0), ([32], 7 * 32 + 32)])
def test_parameter_counts_split(vector_mlp: list[int] | None, vector_params: int) -> None:
    extractor = make_extractor(DictImageEnv().observation_space, vector_mlp=vector_mlp)
    counts = extractor.parameter_counts()
    assert counts["vector"] == vector_params
    assert counts["rnn"] == count_parameters(extractor.rnn) == 3 * (16 * 8 + 8 * 8 + 2 * 8)
    assert counts["cnn"] + counts["rnn"] + counts["vector"] == counts["total"] == count_parameters(extractor)


def test_normalized_float_images_are_accepted() -> None:
    space = spaces.Box(low=0.0, high=1.0, shape=(4, 36, 36), dtype=np.float32)
    extractor = make_extractor(space, normalized_image=True)
    assert extractor(th.rand(2, 4, 36, 36)).shape == (2, 8)


# --- validation -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "frames"), [((6, 36, 36), 4), ((4, 36, 36), 3)])
def test_channels_not_divisible_by_frames(shape: tuple[int, int, int], frames: int) -> None:
    with pytest.raises(ValueError, match=rf"{shape[0]} channels.*not divisible by frames={frames}"):
        CnnGruExtractor(spaces.Box(0, 255, shape, np.uint8), frames=frames)


@pytest.mark.parametrize(("cnn", "size"), [("pooled", 28), ("nature", 35)])
def test_image_too_small_names_minimum(cnn: str, size: int) -> None:
    minimum = min_image_size(cnn)
    assert minimum == size + 1
    with pytest.raises(ValueError, match=rf"{size}x{size}.*>= {minimum}"):
        CnnGruExtractor(image_space(4, size), cnn=cnn)


@pytest.mark.parametrize("cnn", ["pooled", "nature"])
def test_minimum_image_size_builds(cnn: str) -> None:
    size = min_image_size(cnn)
    extractor = make_extractor(image_space(4, size), cnn=cnn)
    assert extractor.cnn.n_flatten == 64


@pytest.mark.parametrize("space", [spaces.Discrete(3), spaces.MultiBinary(4), spaces.Tuple([image_space()])])
def test_wrong_space_type(space: spaces.Space) -> None:
    with pytest.raises(ValueError, match="needs a Box image space"):
        CnnGruExtractor(space)


def test_missing_image_key_lists_keys() -> None:
    space = spaces.Dict({"camera": image_space(), "speed": spaces.Box(-1, 1, (1,), np.float32)})
    with pytest.raises(ValueError, match=r"no image key 'image'.*\['camera', 'speed'\]"):
        CnnGruExtractor(space)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        (spaces.Box(0, 255, (4, 36), np.uint8), "3 dimensions"),
        (spaces.Box(0.0, 1.0, (4, 36, 36), np.float32), "dtype uint8"),
        (spaces.Box(0, 100, (4, 36, 36), np.uint8), r"bounds \[0, 255\]"),
        (spaces.Box(0, 255, (36, 36, 4), np.uint8), "channel-last"),
    ],
)
def test_invalid_image_space(space: spaces.Box, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CnnGruExtractor(space)


def test_vector_key_must_be_1d_box() -> None:
    space = spaces.Dict({"image": image_space(), "map": spaces.Box(0, 1, (3, 3), np.float32)})
    with pytest.raises(ValueError, match="'map' must be a 1-D Box"):
        CnnGruExtractor(space)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames": 0}, "frames must be a positive int"),
        ({"cnn": "resnet"}, "cnn must be one of"),
        ({"cnn_features": 0}, "cnn_features must be a positive int"),
        ({"rnn": "transformer"}, "rnn must be one of"),
        ({"rnn_hidden": -1}, "rnn_hidden must be a positive int"),
        ({"vector_mlp": [0]}, "vector_mlp must be a list of positive ints"),
        ({"vector_mlp": [8]}, "needs a Dict observation space with vector keys"),
    ],
)
def test_invalid_argument(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CnnGruExtractor(image_space(), **kwargs)


# --- end to end with plain SB3 TD3 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("rnn", ["gru", None])
def test_td3_critic_loss_reaches_critic_extractor(rnn: str | None) -> None:
    env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=4, discrete=False)
    kwargs = {"frames": 4, "cnn_features": 16, "rnn": rnn, "rnn_hidden": 8}
    policy_kwargs = {"features_extractor_class": CnnGruExtractor, "features_extractor_kwargs": kwargs, "net_arch": [32]}
    model = TD3("CnnPolicy", env, policy_kwargs=policy_kwargs, buffer_size=250, learning_starts=50, batch_size=8, seed=0)
    model.learn(50)
    assert isinstance(model.critic.features_extractor, CnnGruExtractor)
    before = critic_extractor_params(model)
    model.train(gradient_steps=1, batch_size=8)
    after = critic_extractor_params(model)
    unchanged = [name for name in before if th.equal(before[name], after[name])]
    assert unchanged == []


def test_td3_multi_input_policy_trains_on_dict_observations() -> None:
    kwargs = {"cnn_features": 16, "rnn_hidden": 8, "vector_mlp": [8]}
    policy_kwargs = {"features_extractor_class": CnnGruExtractor, "features_extractor_kwargs": kwargs, "net_arch": [32]}
    model = TD3("MultiInputPolicy", DictImageEnv(), policy_kwargs=policy_kwargs, buffer_size=250, learning_starts=50, seed=0)
    model.learn(50)
    before = critic_extractor_params(model)
    model.train(gradient_steps=1, batch_size=8)
    after = critic_extractor_params(model)
    assert model.critic.features_extractor.features_dim == 16
    assert [name for name in before if th.equal(before[name], after[name])] == []


def shifted_pair(batch: int = 3, channels: int = 1, frames: int = 4, size: int = 36) -> tuple[th.Tensor, th.Tensor]:
    """obs and next obs of a frame stack: next drops obs's oldest frame and appends a new one."""
    th.manual_seed(0)
    stream = th.rand(batch, (frames + 1) * channels, size, size)
    return stream[:, : frames * channels], stream[:, channels:]


def count_cnn_frames(extractor: CnnGruExtractor) -> list[int]:
    frames: list[int] = []
    extractor.cnn.register_forward_hook(lambda module, inputs, output: frames.append(inputs[0].shape[0]))
    return frames


@pytest.mark.parametrize("rnn", ["gru", "lstm"])
def test_forward_pair_encodes_shared_frames_once_and_matches_forward(rnn: str) -> None:
    extractor = make_extractor(image_space(4), rnn=rnn)
    obs, next_obs = shifted_pair()
    frames = count_cnn_frames(extractor)
    features, next_features = extractor.forward_pair(obs, next_obs)
    assert sum(frames) == 3 * 4 + 3  # 4 frames per obs, then only each next obs's newest frame
    assert features.requires_grad and not next_features.requires_grad
    with th.no_grad():
        th.testing.assert_close(features, extractor(obs))
        th.testing.assert_close(next_features, extractor(next_obs))


def test_forward_pair_falls_back_when_the_images_are_not_a_shifted_pair() -> None:
    extractor = make_extractor(image_space(4))
    obs, _ = shifted_pair()
    unrelated = th.rand_like(obs)
    frames = count_cnn_frames(extractor)
    _, next_features = extractor.forward_pair(obs, unrelated)
    assert sum(frames) == 2 * 3 * 4
    with th.no_grad():
        th.testing.assert_close(next_features, extractor(unrelated))


def test_forward_pair_with_dict_vectors_matches_forward() -> None:
    space = spaces.Dict({"image": image_space(4), "vector": spaces.Box(-1, 1, (5,), np.float32)})
    extractor = make_extractor(space, vector_mlp=[6])
    obs, next_obs = shifted_pair()
    vectors = th.rand(3, 5), th.rand(3, 5)
    pair = extractor.forward_pair({"image": obs, "vector": vectors[0]}, {"image": next_obs, "vector": vectors[1]})
    with th.no_grad():
        th.testing.assert_close(pair[0], extractor({"image": obs, "vector": vectors[0]}))
        th.testing.assert_close(pair[1], extractor({"image": next_obs, "vector": vectors[1]}))


@pytest.mark.parametrize("rnn", ["gru", None])
def test_trunk_bounds_the_image_features_and_sets_features_dim(rnn: str | None) -> None:
    space = spaces.Dict({"image": image_space(4), "vector": spaces.Box(-1, 1, (5,), np.float32)})
    extractor = make_extractor(space, rnn=rnn, trunk=10)
    assert extractor.features_dim == 10 + 5
    obs = {"image": th.rand(3, 4, 36, 36) * 100.0, "vector": th.rand(3, 5)}  # large inputs: unbounded CNN features
    with th.no_grad():
        features = extractor(obs)
    assert features[:, :10].abs().max() <= 1.0
    layer_norm = extractor.trunk[1]
    assert isinstance(layer_norm, th.nn.LayerNorm) and isinstance(extractor.trunk[2], th.nn.Tanh)


@pytest.mark.parametrize("rnn", ["gru", None])
def test_forward_pair_with_a_trunk_matches_forward(rnn: str | None) -> None:
    extractor = make_extractor(image_space(4), rnn=rnn, trunk=6)
    obs, next_obs = shifted_pair()
    features, next_features = extractor.forward_pair(obs, next_obs)
    assert features.shape == (3, 6)
    with th.no_grad():
        th.testing.assert_close(features, extractor(obs))
        th.testing.assert_close(next_features, extractor(next_obs))


@pytest.mark.parametrize("trunk", [0, -3, 2.5, True])
def test_bad_trunk_names_the_argument(trunk: object) -> None:
    with pytest.raises(ValueError, match="trunk must be a positive int"):
        make_extractor(image_space(4), trunk=trunk)


@pytest.mark.parametrize(("cnn", "rnn"), [("nature", None), ("pooled", "gru")])
def test_center_pixels_feeds_the_cnn_image_minus_a_half(cnn: str, rnn: str | None) -> None:
    plain = make_extractor(image_space(), cnn=cnn, rnn=rnn)
    centred = make_extractor(image_space(), cnn=cnn, rnn=rnn, center_pixels=True)  # same seed: same weights
    images = th.rand(3, 4, 36, 36)
    assert th.allclose(centred(images), plain(images - 0.5), atol=1e-6)
    assert not th.allclose(centred(images), plain(images), atol=1e-3)
    pair, _ = centred.forward_pair(images, th.cat([images[:, 1:], th.rand(3, 1, 36, 36)], dim=1))
    assert th.allclose(pair, plain(images - 0.5), atol=1e-6)  # the frame-sharing path centres too


def test_center_pixels_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="center_pixels must be True or False, got 'yes'"):
        make_extractor(image_space(), center_pixels="yes")

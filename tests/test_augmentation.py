"""Random-shift augmentation: the shift itself, obs/next-obs pairs, and TD3CNN training on shifted replay images."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from conftest import TINY_ENCODER, make_image_env, make_model
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from sb3_carla_td3 import td3_cnn as td3_cnn_module
from sb3_carla_td3.augmentation import random_shift, shift_pair
from sb3_carla_td3.buffers import DictFrameStackReplayBuffer, FrameStackReplayBuffer
from sb3_carla_td3.envs.carracing import CarRacingConfig, CarRacingEnv
from sb3_carla_td3.td3_cnn import TD3CNN


def reference_shift(images: np.ndarray, pad: int, offsets: np.ndarray) -> np.ndarray:
    """numpy's edge padding, then a crop at each sample's offset."""
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
    height, width = images.shape[2:]
    return np.stack([padded[i, :, r : r + height, c : c + width] for i, (r, c) in enumerate(offsets)])


def test_random_shift_matches_pad_and_crop_for_every_offset():
    images = th.randint(0, 256, (9, 3, 7, 6), dtype=th.uint8)
    offsets = th.tensor([[r, c] for r in range(3) for c in range(3)])
    shifted = random_shift(images, 1, offsets)
    assert shifted.dtype == th.uint8 and shifted.shape == images.shape
    np.testing.assert_array_equal(shifted.numpy(), reference_shift(images.numpy(), 1, offsets.numpy()))


def test_centre_offset_is_the_identity_and_zero_pad_does_nothing():
    images = th.rand(2, 4, 8, 8)
    th.testing.assert_close(random_shift(images, 3, th.tensor([[3, 3], [3, 3]])), images)
    assert random_shift(images, 0) is images


def test_random_offsets_stay_within_the_pad():
    th.manual_seed(0)
    images = th.zeros(500, 1, 9, 9)
    images[:, :, 4, 4] = 1.0  # one lit pixel in the centre
    shifted = random_shift(images, 2)
    rows, cols = (shifted[:, 0] == 1.0).nonzero()[:, 1:].T
    assert set(rows.tolist()) == set(range(2, 7)) and set(cols.tolist()) == set(range(2, 7))


def test_shift_pair_keeps_a_frame_stack_a_shifted_pair_and_vectors_unchanged():
    frames = th.randint(0, 256, (4, 5, 12, 12), dtype=th.uint8)  # 5 frames: obs = 0..3, next obs = 1..4
    obs = {"image": frames[:, :4], "vector": th.rand(4, 3)}
    next_obs = {"image": frames[:, 1:], "vector": th.rand(4, 3)}
    shifted, next_shifted = shift_pair(obs, next_obs, pad=2)
    assert th.equal(shifted["image"][:, 1:], next_shifted["image"][:, :-1])
    assert not th.equal(shifted["image"], obs["image"])
    assert shifted["vector"] is obs["vector"] and next_shifted["vector"] is next_obs["vector"]


def spy_on_shifts(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def spy(obs, next_obs, pad, image_key="image"):
        calls.append((obs, pad, image_key))
        return shift_pair(obs, next_obs, pad, image_key)

    monkeypatch.setattr(td3_cnn_module, "shift_pair", spy)
    return calls


@pytest.mark.parametrize("encoder", ["separate", "shared"])
def test_td3cnn_trains_on_shifted_frame_stacked_images(monkeypatch, encoder):
    calls = spy_on_shifts(monkeypatch)
    env = VecFrameStack(DummyVecEnv([lambda: make_image_env(channels=1)]), n_stack=4)
    model = make_model(env, encoder=encoder, augment="shift", augment_pad=3)
    assert isinstance(model.replay_buffer, FrameStackReplayBuffer)
    model.learn(40)
    assert len(calls) == model._n_updates == 8 and calls[0][1] == 3
    assert model.last_train_stats.critic_grad_norm_pre > 0


@pytest.mark.parametrize("encoder", ["separate", "shared"])
def test_td3cnn_shifts_the_image_of_dict_observations(monkeypatch, encoder):
    calls = spy_on_shifts(monkeypatch)
    env = CarRacingEnv(CarRacingConfig(image_size=36, vector_obs=True))  # a real Dict frame stack: image + vector
    kwargs = {"net_arch": [16], "features_extractor_kwargs": dict(TINY_ENCODER)}
    model = TD3CNN("MultiInputPolicy", env, buffer_size=200, learning_starts=30, batch_size=8, seed=0,
                   policy_kwargs=kwargs, encoder=encoder, augment="shift", device="cpu")  # fmt: skip
    assert isinstance(model.replay_buffer, DictFrameStackReplayBuffer)
    model.learn(40)
    assert len(calls) == 10 and set(calls[0][0]) == {"image", "vector"} and calls[0][2] == "image"


def test_augment_off_never_shifts(monkeypatch):
    calls = spy_on_shifts(monkeypatch)
    make_model(augment=None).learn(40)
    assert calls == []


def test_auto_augment_shifts_an_image_alone_and_nothing_else():
    # The two measured recipes: pixels alone with DrQ's shift, camera + vector without it; vectors have no pixels.
    assert make_model().augment == "shift"
    camera_and_vector = CarRacingEnv(CarRacingConfig(image_size=36, vector_obs=True))
    kwargs = {"net_arch": [16], "features_extractor_kwargs": dict(TINY_ENCODER)}
    assert TD3CNN("MultiInputPolicy", camera_and_vector, buffer_size=100, policy_kwargs=kwargs).augment is None
    assert TD3CNN("MlpPolicy", "Pendulum-v1", buffer_size=100, device="cpu").augment is None


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"augment": "crop"}, "augment must be"), ({"augment_pad": 0}, "augment_pad")]
)
def test_bad_augment_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model(**kwargs)


def test_augment_on_a_vector_observation_names_the_space():
    with pytest.raises(ValueError, match=r"needs \(C, H, W\) images"):
        TD3CNN("MlpPolicy", "Pendulum-v1", augment="shift", device="cpu")

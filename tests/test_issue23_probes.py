"""Issue 23's probes that gave a wrong or unclear answer, each pinned by a test (the fixes landed in 45d1641 and
before): a missing image key names the keys, frames are never guessed from a channel count."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import TINY_ENCODER
from gymnasium import spaces

from sb3_carla_td3.policies import default_frames
from sb3_carla_td3.td3_cnn import TD3CNN


class CameraDictEnv(gym.Env):
    """A Dict env whose image key is "camera", not "image"."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {"camera": spaces.Box(0, 255, (3, 36, 36), np.uint8), "speed": spaces.Box(-1, 1, (1,), np.float32)}
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


def test_multi_input_policy_on_a_dict_without_image_key_names_the_keys_found():
    kwargs = {"features_extractor_kwargs": dict(TINY_ENCODER)}
    with pytest.raises(ValueError, match=r"'camera'.*'speed'|'speed'.*'camera'") as error:
        TD3CNN("MultiInputPolicy", CameraDictEnv(), buffer_size=100, policy_kwargs=kwargs, device="cpu")
    assert not isinstance(error.value, KeyError)


@pytest.mark.parametrize("channels", [4, 8])
def test_a_per_frame_encoder_never_guesses_frames_from_channels(channels):
    space = spaces.Box(0, 255, (channels, 36, 36), np.uint8)
    with pytest.raises(ValueError, match=f"{channels}-channel image"):
        default_frames(space, rnn="gru")
    assert default_frames(space, rnn=None) == 1  # the stacked-channel CNN reads every channel at once: exact


@pytest.mark.parametrize("channels", [1, 3])
def test_one_grayscale_or_rgb_frame_is_one_frame(channels):
    assert default_frames(spaces.Box(0, 255, (channels, 36, 36), np.uint8), rnn="gru") == 1

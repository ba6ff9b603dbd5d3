"""Shared fixtures: tiny image envs and tiny TD3CNN models that train in well under a second per step on a CPU."""

from __future__ import annotations

from typing import Any

import pytest
import torch as th
from stable_baselines3.common.envs import FakeImageEnv

from sb3_carla_td3.envs.carla.sharing import REGISTRY
from sb3_carla_td3.td3_cnn import TD3CNN

th.set_num_threads(1)

#: A cheap encoder for mechanism tests: stacked NatureCNN (36 px is its minimum) with 16 features, no trunk.
TINY_ENCODER: dict[str, Any] = {"cnn": "nature", "rnn": None, "cnn_features": 16, "trunk": None, "center_pixels": False}


def make_image_env(size: int = 36, channels: int = 4) -> FakeImageEnv:
    """A random-pixel image env with a continuous action space (SB3's FakeImageEnv)."""
    return FakeImageEnv(screen_height=size, screen_width=size, n_channels=channels, discrete=False)


def make_model(env: Any = None, **kwargs: Any) -> TD3CNN:
    """A TD3CNN with tiny networks and separate encoders (the layout most mechanism tests inspect: an actor CNN and a
    critic CNN); any argument can be overridden, ``encoder="shared"`` included."""
    params: dict[str, Any] = {
        "encoder": "separate",
        "buffer_size": 250,
        "learning_starts": 32,
        "batch_size": 8,
        "policy_kwargs": {"net_arch": [16], "features_extractor_kwargs": dict(TINY_ENCODER)},
        "seed": 0,
        "device": "cpu",
    }
    params.update(kwargs)
    return TD3CNN("CnnPolicy", env if env is not None else make_image_env(), **params)


@pytest.fixture
def image_env() -> FakeImageEnv:
    return make_image_env()


@pytest.fixture
def filled_model() -> TD3CNN:
    """A tiny TD3CNN whose replay buffer holds 40 transitions and that has not trained yet."""
    model = make_model(learning_starts=1000)
    model.learn(40)
    return model


@pytest.fixture(autouse=True)
def fresh_carla_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts with no live CarlaEnv connection in this process: the fake servers of all tests answer on
    localhost:2000, so an env a test left open would otherwise share (and hold the settings of) the next test's."""
    monkeypatch.setattr(REGISTRY, "_servers", {})

"""Environments with one interface: Dict or Box frame-stacked uint8 images, actions [steer, throttle_brake] in [-1, 1].

``make_env("carracing")`` is the embedded default (gymnasium CarRacing-v3, no server needed);
``make_env("carla")`` needs the ``[carla]`` extra and a running CARLA 0.9.16 server. The driving recipe's env rules
(soft brake, stuck and off-track endings, action repeat) are also gymnasium wrappers for an env of your own
(:mod:`sb3_carla_td3.envs.wrappers`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym

from sb3_carla_td3.config import env_options_class
from sb3_carla_td3.envs.carla.config import CameraConfig, CarlaConfig, RewardConfig, RouteConfig
from sb3_carla_td3.envs.carla.env import CarlaEnv
from sb3_carla_td3.envs.carla.vec_env import make_carla_vec_env
from sb3_carla_td3.envs.carracing import CarRacingConfig, CarRacingEnv
from sb3_carla_td3.envs.wrappers import (
    ActionRepeat,
    OffTrackTermination,
    PedalMapping,
    StreakCounter,
    StuckTermination,
    carracing_off_track,
    carracing_speed,
    pedal_control,
)

ENV_NAMES = ("carracing", "carla")

def make_env(name: str, config: Any = None, render_mode: str | None = None, **overrides: Any) -> gym.Env:
    """Build one of the library's driving environments.

    :param name: "carracing" (embedded default) or "carla"
    :param config: the env's options dataclass (CarRacingConfig / CarlaConfig), a dict of its fields, or None
    :param render_mode: gymnasium render mode, e.g. "rgb_array"
    :param overrides: individual option fields that replace those of ``config``
    :return: the environment
    """
    if name not in ENV_NAMES:
        raise ValueError(f"name must be one of {ENV_NAMES}, got {name!r}")
    options_class: Any = env_options_class(name)  # CarRacingConfig or CarlaConfig, both with from_dict
    if config is None:
        config = options_class()
    elif isinstance(config, dict):
        config = options_class.from_dict(config)
    elif not isinstance(config, options_class):
        expected = f"a {options_class.__name__}, a dict or None"
        raise ValueError(f"config for {name!r} must be {expected}, got {type(config).__name__}")
    if overrides:
        config = options_class.from_dict({**dataclasses.asdict(config), **overrides})
    if name == "carracing":
        return CarRacingEnv(config, render_mode=render_mode)
    return CarlaEnv(config, render_mode=render_mode)


__all__ = [
    "ENV_NAMES",
    "ActionRepeat",
    "CameraConfig",
    "CarRacingConfig",
    "CarRacingEnv",
    "CarlaConfig",
    "CarlaEnv",
    "OffTrackTermination",
    "PedalMapping",
    "RewardConfig",
    "RouteConfig",
    "StreakCounter",
    "StuckTermination",
    "carracing_off_track",
    "carracing_speed",
    "make_carla_vec_env",
    "make_env",
    "pedal_control",
]

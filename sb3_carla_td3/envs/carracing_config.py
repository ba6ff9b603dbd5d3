"""Options of the embedded CarRacing env (:class:`CarRacingConfig`, the YAML ``env:`` section when ``name: carracing``),
checked field by field against their documented ranges."""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gymnasium.envs.box2d import car_racing

from sb3_carla_td3.envs.penalties import check_penalty
from sb3_carla_td3.envs.wrappers import PEDAL_MAPPINGS as PEDAL_MAPPINGS  # how ``pedal`` maps throttle_brake
from sb3_carla_td3.errors import ConfigError

STATE_SIZE = car_racing.STATE_H  # 96: side of CarRacing's state image
# Field name -> (type, lowest, highest accepted value); fields not listed are booleans. The help text states the range.
_CONFIG_LIMITS: dict[str, tuple[type, float | None, float | None]] = {
    "image_size": (int, 16, STATE_SIZE),
    "frames": (int, 1, 16),
    "max_episode_steps": (int, 1, None),
    "offtrack_steps": (int, 0, None),
    "offtrack_penalty": (float, None, 0.0),
    "stuck_steps": (int, 0, None),
    "stuck_speed": (float, 0.0, None),
    "action_repeat": (int, 1, 16),
    "lap_complete_percent": (float, 0.0, 1.0),  # lowest value excluded
    "stuck_penalty": (float, None, 0.0),
    "max_brake": (float, 0.0, 1.0),  # lowest value excluded
    "pedal": (str, None, None),
    "n_waypoints": (int, 0, 100),
    "lookahead_m": (float, 0.0, 500.0),  # lowest value excluded
}
_EXCLUSIVE_LOW = ("lap_complete_percent", "max_brake", "lookahead_m")  # fields whose lowest value is excluded


@dataclass
class CarRacingConfig:
    """Options of :class:`CarRacingEnv`; the YAML ``env:`` section loads into it via :meth:`from_dict`."""

    image_size: int = field(default=84, metadata={"help": "side of the square observation image in pixels, 16-96"})
    frames: int = field(default=4, metadata={"help": "number of stacked frames, newest last, 1-16"})
    grayscale: bool = field(default=True, metadata={"help": "one luma channel per frame instead of three RGB channels"})
    crop_hud: bool = field(default=True, metadata={"help": "cut the 12-px indicator strip and 6 px per side (84x84 px)"})
    vector_obs: bool = field(default=False, metadata={"help": "Dict observation with the car-physics 'vector'"})
    image_obs: bool = field(
        default=True, metadata={"help": "observe the camera frames; false (with vector_obs): the vector alone, no rendering"}
    )
    n_waypoints: int = field(
        default=0,
        metadata={"help": "centre-line points ahead appended to the vector (x forward, y right), 0-100; 0 = none"},
    )
    lookahead_m: float = field(
        default=50.0, metadata={"help": "track length those points span, units (~m), (0, 500]; as CARLA's route vector"}
    )
    pedal: str = field(
        default="split",
        metadata={"help": "split (a > 0 gas, a < 0 brake) or linear ([-1, 1] onto [-max_brake, 1]: a = 0 is some gas)"},
    )
    max_brake: float = field(
        default=1.0, metadata={"help": "brake pedal at throttle_brake -1, (0, 1]; CarRacing locks the wheels above 0.9"}
    )
    max_episode_steps: int = field(default=1000, metadata={"help": "truncate after this many env steps, >= 1"})
    offtrack_steps: int = field(default=25, metadata={"help": "terminate after N steps with all wheels off; 0 = off"})
    offtrack_penalty: float = field(
        default=-100.0, metadata={"help": "penalty <= 0 added to the reward on an off-track termination"}
    )
    stuck_steps: int = field(default=100, metadata={"help": "truncate after N steps below stuck_speed; 0 = off"})
    stuck_speed: float = field(default=1.0, metadata={"help": "speed below which the car counts as stuck, m/s, >= 0"})
    stuck_penalty: float = field(
        default=0.0,
        metadata={"help": "penalty <= 0 added to the reward on a stuck ending; non-zero makes 'stuck' a termination"},
    )
    action_repeat: int = field(default=1, metadata={"help": "physics frames (1/50 s each) per env step, 1-16"})
    skip_zoom: bool = field(default=True, metadata={"help": "reset runs the 1-s zoom-in animation without rendering"})
    domain_randomize: bool = field(default=False, metadata={"help": "random grass and road colours at every reset"})
    lap_complete_percent: float = field(default=0.95, metadata={"help": "fraction of tiles that completes a lap, (0, 1]"})

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind, low, high = _CONFIG_LIMITS.get(f.name, (bool, None, None))
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"CarRacingConfig.{f.name} must be true or false, got {value!r}")
            if kind is str and value not in PEDAL_MAPPINGS:
                raise ConfigError(f"CarRacingConfig.{f.name} must be one of {', '.join(PEDAL_MAPPINGS)}, got {value!r}")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"CarRacingConfig.{f.name} must be an integer, got {value!r}")
            if f.name.endswith("_penalty"):  # the sign convention of both envs, with its own message
                check_penalty(f"CarRacingConfig.{f.name}", value)
            if kind is float:
                if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    raise ConfigError(f"CarRacingConfig.{f.name} must be a finite number, got {value!r}")
                setattr(self, f.name, float(value))
            too_low = low is not None and (value <= low if f.name in _EXCLUSIVE_LOW else value < low)
            if too_low or (high is not None and value > high):
                raise ConfigError(f"CarRacingConfig.{f.name} is out of range ({f.metadata['help']}), got {value!r}")
        if not (self.image_obs or self.vector_obs):
            raise ConfigError("CarRacingConfig: image_obs and vector_obs are both false; the env would observe nothing")
        if self.n_waypoints and not self.vector_obs:
            raise ConfigError(
                f"CarRacingConfig.n_waypoints is {self.n_waypoints} but vector_obs is false; the waypoints are part of "
                "the vector: set vector_obs: true or n_waypoints: 0"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CarRacingConfig:
        """Build a config from a mapping such as a YAML ``env:`` section, rejecting unknown keys.

        :param data: field names to values; missing fields keep their defaults
        :return: the validated config
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"the CarRacing env config must be a mapping of field names to values, got {data!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                closest = difflib.get_close_matches(str(key), names, n=1, cutoff=0.0)[0]
                raise ConfigError(
                    f"unknown CarRacing env config key {key!r}; did you mean {closest!r}? Valid keys: {', '.join(names)}"
                )
        return cls(**data)

"""Typed run configuration: YAML files with the sections ``env``, ``encoder``, ``td3``, ``run`` and ``monitor``.

Every key of every section must be a field of that section's dataclass (or a documented alias of one): an unknown
key raises :class:`ConfigError` naming the file, the key and the closest valid key, so no setting can be silently
ignored as in the system this library replaces. Types and ranges are checked when the file is loaded.

The sections live in :mod:`sb3_carla_td3.config.sections`, the loading in :mod:`sb3_carla_td3.config.loading`; both are
importable from here.
"""

from sb3_carla_td3.config.loading import SECTIONS, apply_overrides, build_dataclass, config_from_dict, load_config
from sb3_carla_td3.config.sections import (
    ENV_CONFIG_CLASSES,
    EncoderConfig,
    EnvSection,
    MonitorConfig,
    RunConfig,
    RunSettings,
    TD3Config,
    env_options_class,
)
from sb3_carla_td3.errors import ConfigError as ConfigError  # what loading raises, importable here as before

__all__ = [
    "ENV_CONFIG_CLASSES",
    "SECTIONS",
    "EncoderConfig",
    "EnvSection",
    "MonitorConfig",
    "RunConfig",
    "RunSettings",
    "TD3Config",
    "apply_overrides",
    "build_dataclass",
    "config_from_dict",
    "env_options_class",
    "load_config",
]

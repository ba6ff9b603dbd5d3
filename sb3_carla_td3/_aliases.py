"""Every old import path of a module that moved, kept as an alias of the same module object, in one place.

Imported by the package's ``__init__``, so that ``import sb3_carla_td3.saturation`` (issue 20) or
``from sb3_carla_td3.envs.routes import ...`` works as before. An alias is the module object itself, not a copy, so a
monkeypatch on either path reaches both. ``tests/test_imports.py`` checks each one.
"""

from __future__ import annotations

import importlib
import sys

#: Old path -> the module's home.
ALIASES: dict[str, str] = {
    "sb3_carla_td3.saturation": "sb3_carla_td3.callbacks.saturation",
    # The CARLA modules lived beside the CarRacing env before they moved into envs/carla/.
    "sb3_carla_td3.envs.carla_actors": "sb3_carla_td3.envs.carla.actors",
    "sb3_carla_td3.envs.carla_api": "sb3_carla_td3.envs.carla.api",
    "sb3_carla_td3.envs.carla_config": "sb3_carla_td3.envs.carla.config",
    "sb3_carla_td3.envs.carla_connection": "sb3_carla_td3.envs.carla.connection",
    "sb3_carla_td3.envs.carla_env": "sb3_carla_td3.envs.carla.env",
    "sb3_carla_td3.envs.carla_episode": "sb3_carla_td3.envs.carla.episode",
    "sb3_carla_td3.envs.carla_fake": "sb3_carla_td3.envs.carla.fake",
    "sb3_carla_td3.envs.carla_fake_objects": "sb3_carla_td3.envs.carla.fake_objects",
    "sb3_carla_td3.envs.carla_sensors": "sb3_carla_td3.envs.carla.sensors",
    "sb3_carla_td3.envs.carla_server": "sb3_carla_td3.envs.carla.server",
    "sb3_carla_td3.envs.carla_vec_env": "sb3_carla_td3.envs.carla.vec_env",
    "sb3_carla_td3.envs.rewards": "sb3_carla_td3.envs.carla.rewards",
    "sb3_carla_td3.envs.routes": "sb3_carla_td3.envs.carla.routes",
}

for _old, _home in ALIASES.items():
    _parent, _, _name = _old.rpartition(".")
    sys.modules[_old] = importlib.import_module(_home)
    setattr(importlib.import_module(_parent), _name, sys.modules[_old])  # ``import a.b`` then reads ``a.b``

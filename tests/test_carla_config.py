"""CarlaConfig: defaults, help text, range checks, unknown keys, YAML example, and no ``carla`` import."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sb3_carla_td3.envs.carla.config import SCENARIO_NPC_VEHICLES, CarlaConfig
from sb3_carla_td3.errors import ConfigError

EXAMPLE_YAML = Path(__file__).resolve().parents[1] / "configs" / "carla_town01.yaml"


def _all_fields(cls: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    found = []
    for f in dataclasses.fields(cls):
        found.append((prefix + f.name, f))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            found += _all_fields(type(default), prefix + f.name + ".")
    return found


def test_every_field_has_a_default_and_help_text() -> None:
    for name, f in _all_fields(CarlaConfig):
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        assert has_default, f"{name} has no default"
        assert len(f.metadata.get("help", "")) > 10, f"{name} has no help text"


@pytest.mark.parametrize("scenario", sorted(SCENARIO_NPC_VEHICLES))
def test_scenario_sets_npc_count(scenario: int) -> None:
    assert CarlaConfig(scenario=scenario).n_npc_vehicles == SCENARIO_NPC_VEHICLES[scenario]


def test_npc_vehicles_overrides_scenario() -> None:
    assert CarlaConfig(scenario=2, npc_vehicles=3).n_npc_vehicles == 3


def test_from_dict_builds_nested_sections() -> None:
    config = CarlaConfig.from_dict({"port": 2004, "camera": {"width": 320}, "route": {"start_xy": [1, 2], "end_xy": [3, 4]}})
    assert (config.port, config.camera.width, config.camera.height) == (2004, 320, CarlaConfig().camera.height)
    assert config.route.start_xy == [1.0, 2.0]


def test_to_dict_round_trips() -> None:
    reward = dataclasses.replace(CarlaConfig().reward, comfort_weight=0.7)
    config = CarlaConfig(port=3000, tm_port=9000, grayscale=False, reward=reward)
    assert CarlaConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"prot": 2000}, "'port'"),
        ({"camera": {"widht": 100}}, "'width'"),
        ({"reward": {"colision_penalty": 1.0}}, "'collision_penalty'"),
    ],
)
def test_from_dict_rejects_unknown_key_naming_the_closest(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        CarlaConfig.from_dict(data)


def test_from_dict_accepts_the_yaml_name_selector_only_for_carla() -> None:
    assert CarlaConfig.from_dict({"name": "carla", "port": 2002}).port == 2002
    with pytest.raises(ConfigError, match="name must be 'carla'"):
        CarlaConfig.from_dict({"name": "carracing"})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"port": 0}, "port"),
        ({"port": "2000"}, "port"),
        ({"port": True}, "port"),
        ({"tm_port": 2001}, "tm_port"),
        ({"timeout_s": 0.0}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"fixed_delta_seconds": 0.2}, "fixed_delta_seconds"),
        ({"frames": 0}, "frames"),
        ({"image_size": 8}, "image_size"),
        ({"grayscale": "yes"}, "grayscale"),
        ({"scenario": 3}, "scenario"),
        ({"npc_vehicles": -1}, "npc_vehicles"),
        ({"host": ""}, "host"),
        ({"seed": -1}, "seed"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
        ({"stuck_seconds": 0}, "stuck_seconds"),
        ({"settle_max_dropped_frames": -1}, r"settle_max_dropped_frames must be an integer in \[0, 100\]"),
        ({"settle_max_dropped_frames": 101}, "settle_max_dropped_frames"),
        ({"settle_max_dropped_frames": 1.5}, "settle_max_dropped_frames"),
        ({"settle_max_dropped_frames": True}, "settle_max_dropped_frames"),
        ({"reconnect_attempts": 0}, r"reconnect_attempts must be an integer in \[1, 1000\]"),
        ({"reconnect_delay_s": -1.0}, "reconnect_delay_s"),
        ({"reconnect_max_delay_s": 0.5}, r"reconnect_max_delay_s must be >= reconnect_delay_s"),
    ],
)
def test_out_of_range_value_raises_naming_field_and_value(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        CarlaConfig(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(info.value)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"camera": {"fov_deg": 180}}, "camera.fov_deg"),
        ({"camera": {"width": 8}}, "camera.width"),
        ({"route": {"start_xy": [1.0, 2.0]}}, "route.start_xy and route.end_xy"),
        ({"route": {"start_xy": [1.0], "end_xy": [2.0, 3.0]}}, "route.start_xy"),
        ({"route": {"n_waypoints": 0}}, "route.n_waypoints"),
        ({"reward": {"collision_penalty": -2e6}}, "reward.collision_penalty"),
        ({"reward": {"comfort_weight": -0.2}}, "reward.comfort_weight"),
        ({"reward": {"target_speed_mps": 0.0}}, "reward.target_speed_mps"),
    ],
)
def test_nested_out_of_range_value_names_the_dotted_field(data: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        CarlaConfig.from_dict(data)


def test_validate_catches_a_field_changed_after_construction() -> None:
    config = CarlaConfig()
    config.frames = 99
    with pytest.raises(ConfigError, match="frames"):
        config.validate()


def test_example_yaml_env_section_builds_the_same_config_both_ways() -> None:
    env_section = yaml.safe_load(EXAMPLE_YAML.read_text())["env"]
    direct = CarlaConfig.from_dict(env_section)
    config_module = pytest.importorskip("sb3_carla_td3.config")
    loaded = config_module.load_config(EXAMPLE_YAML)
    assert loaded.env.name == "carla"
    assert loaded.env.options == direct


def test_importing_the_env_modules_does_not_import_carla() -> None:
    """The library works without the [carla] extra: carla is imported only when a CarlaEnv is created."""
    modules = ["carla_config", "rewards", "routes", "carla_env", "carla_episode", "carla_vec_env", "carla_api"]
    code = "; ".join(f"import sb3_carla_td3.envs.{m}" for m in modules)
    code += "; import sys; sys.exit(1 if 'carla' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_carla_modules_old_import_paths_still_work():
    """The CARLA modules moved into envs/carla/; code importing sb3_carla_td3.envs.carla_env & co. keeps working."""
    import importlib

    from sb3_carla_td3 import envs
    from sb3_carla_td3._aliases import ALIASES

    moved = {old: home for old, home in ALIASES.items() if old.startswith("sb3_carla_td3.envs.")}
    assert len(moved) == 13
    for old, home in moved.items():
        assert importlib.import_module(old) is importlib.import_module(home)
    from sb3_carla_td3.envs.carla_env import CarlaEnv

    assert CarlaEnv is envs.CarlaEnv and CarlaEnv.__module__ == "sb3_carla_td3.envs.carla.env"

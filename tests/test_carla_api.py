"""API conformance: everything the env calls on ``carla`` exists in the installed wheel.

Three checks close the loop: (1) every name in CARLA_API_USED resolves on the real package; (2) every public
name of every fake (what the env can call in the fake-server tests) exists on the real class it stands for;
(3) every ``carla.X`` chain spelled out in the env modules is listed in CARLA_API_USED.
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

carla = pytest.importorskip("carla")

from sb3_carla_td3.envs import (  # noqa: E402
    carla_actors,
    carla_connection,
    carla_env,
    carla_episode,
    carla_fake,
    carla_fake_objects,
    carla_sensors,
    carla_vec_env,
    routes,
)
from sb3_carla_td3.envs.carla import doctor as carla_doctor  # noqa: E402
from sb3_carla_td3.envs.carla.api import CARLA_API_USED  # noqa: E402
from sb3_carla_td3.envs.carla.config import CarlaConfig  # noqa: E402

XODR = (Path(__file__).parent / "data" / "mini_town.xodr").read_text()
ENV_MODULES = (carla_env, carla_actors, carla_connection, carla_episode, carla_sensors, carla_vec_env, routes, carla_doctor)


def resolve(dotted: str) -> Any:
    """``carla.<dotted>``, attribute by attribute."""
    obj = carla
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", CARLA_API_USED)
def test_used_name_exists_in_the_installed_carla(name: str) -> None:
    parent, _, attr = name.rpartition(".")
    owner = resolve(parent) if parent else carla
    assert hasattr(owner, attr), f"carla.{name} does not exist in carla {importlib.metadata.version('carla')}"


def test_installed_wheel_is_the_supported_version() -> None:
    assert importlib.metadata.version("carla") == "0.9.16"  # the API list was checked against this release


def _exercise_every_fake() -> carla_fake.FakeCarlaServer:
    """Run the env through reset, steps, sensor events, a failure and close, so every fake class is handed out."""
    server = carla_fake.FakeCarlaServer(XODR)
    env = carla_env.CarlaEnv(CarlaConfig(town="mini_town", npc_vehicles=3, settle_ticks=1), backend=server.backend)
    env.reset(seed=0)
    server.inject_lane_invasion()
    env.step(np.zeros(2))
    server.inject_collision()
    env.step(np.zeros(2))
    env.reset()
    server.fail_call("World.tick")
    env.step(np.zeros(2))
    env.close()
    return server


def test_fakes_offer_only_names_the_real_classes_have() -> None:
    server = _exercise_every_fake()
    fake_classes = [
        cls
        for module in (carla_fake, carla_fake_objects)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if getattr(cls, "carla_name", "") and cls.__module__ == module.__name__
    ]
    unexercised = [c.__name__ for c in fake_classes if not any(isinstance(s, c) for s in server.samples.values())]
    assert not unexercised, f"never handed out, so never checked: {unexercised}"
    for cls, sample in server.samples.items():
        real = resolve(cls.carla_name)
        public = {name for name in dir(sample) if not name.startswith("_") and name != "carla_name"}
        missing = sorted(name for name in public if not hasattr(real, name))
        assert not missing, f"{cls.__name__} offers {missing}, which carla.{cls.carla_name} lacks"


def _carla_chains(tree: ast.AST) -> set[str]:
    """Dotted names after ``carla.``, ``self._carla.`` or a local alias ``command`` (= ``carla.command``)."""
    chains: set[str] = set()
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner.add(id(node.value))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        parts, value = [], node
        while isinstance(value, ast.Attribute):
            parts.append(value.attr)
            value = value.value
        parts.reverse()
        if isinstance(value, ast.Name) and value.id == "carla":
            chains.add(".".join(parts))
        elif isinstance(value, ast.Name) and value.id == "command":
            chains.add(".".join(["command", *parts]))
        elif isinstance(value, ast.Name) and value.id == "self" and parts[0] == "_carla" and len(parts) > 1:
            chains.add(".".join(parts[1:]))
    return chains


def test_every_carla_name_spelled_in_the_env_modules_is_listed() -> None:
    chains = set().union(*(_carla_chains(ast.parse(Path(m.__file__).read_text())) for m in ENV_MODULES))
    assert {"VehicleControl", "command.SpawnActor", "LaneType.Driving"} <= chains  # the scan sees the calls
    assert sorted(chains - set(CARLA_API_USED)) == []

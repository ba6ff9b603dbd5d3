"""One sign convention for every penalty of both envs: a number <= 0 that is added to the reward.

The same YAML value must mean the same thing for CarRacing and CARLA, and a value written with the other sign is
rejected naming the key, the value and the expected sign, whether it comes from a dataclass, a mapping or a file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sb3_carla_td3.config import load_config
from sb3_carla_td3.envs.carla.config import PENALTIES, WEIGHTS, CarlaConfig, RewardConfig
from sb3_carla_td3.envs.carla.rewards import RewardInputs, compute_reward_terms
from sb3_carla_td3.envs.carracing import CarRacingConfig
from sb3_carla_td3.envs.penalties import check_penalty
from sb3_carla_td3.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

#: (what the message calls the key, a builder taking the value) for every penalty of both envs.
PENALTY_KEYS: list[tuple[str, Callable[[Any], object]]] = [
    ("CarRacingConfig.offtrack_penalty", lambda v: CarRacingConfig(offtrack_penalty=v)),
    ("CarRacingConfig.stuck_penalty", lambda v: CarRacingConfig(stuck_penalty=v)),
    *[(f"reward.{name}", lambda v, name=name: CarlaConfig.from_dict({"reward": {name: v}})) for name in PENALTIES],
]


@pytest.mark.parametrize(("key", "build"), PENALTY_KEYS, ids=[key for key, _ in PENALTY_KEYS])
def test_a_positive_penalty_names_the_key_the_value_and_the_sign(key: str, build: Callable[[Any], object]) -> None:
    expected = f"{key}=10.0 must be <= 0 (a penalty is added to the reward); write -10.0 for a cost of 10.0"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build(10.0)


@pytest.mark.parametrize(("key", "build"), PENALTY_KEYS, ids=[key for key, _ in PENALTY_KEYS])
@pytest.mark.parametrize("value", [float("nan"), "-10", True])
def test_a_penalty_that_is_not_a_finite_number_is_rejected(key: str, build: Callable[[Any], object], value: Any) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{key} must be a finite number <= 0")):
        build(value)


@pytest.mark.parametrize(("key", "build"), PENALTY_KEYS, ids=[key for key, _ in PENALTY_KEYS])
def test_a_negative_or_zero_penalty_is_accepted_as_a_float(key: str, build: Callable[[Any], object]) -> None:
    for value in (-25, 0):
        config = build(value)
        options = config.reward if isinstance(config, CarlaConfig) else config
        stored = getattr(options, key.rsplit(".", 1)[1])
        assert stored == float(value) and isinstance(stored, float)


def test_carla_config_with_the_old_positive_sign_fails_to_load_naming_the_file_key(tmp_path: Path) -> None:
    """The shipped CARLA config as it was before the convention (stuck_penalty: 10.0) is refused, not inverted."""
    data = yaml.safe_load((CONFIGS / "carla_town01.yaml").read_text())
    data["env"]["reward"]["stuck_penalty"] = 10.0
    path = tmp_path / "old_sign.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=re.escape("reward.stuck_penalty=10.0 must be <= 0 (a penalty is added")):
        load_config(path)


def test_shipped_configs_write_every_penalty_with_its_sign() -> None:
    carla = load_config(CONFIGS / "carla_town01.yaml").env.options
    assert [getattr(carla.reward, name) for name in PENALTIES] == [-10.0, -10.0, -10.0]
    for name in ("carracing_pixels.yaml", "carracing_vector.yaml", "carracing_camera_vector.yaml", "phase1_validation.yaml"):
        options = load_config(CONFIGS / name).env.options
        assert (options.offtrack_penalty, options.stuck_penalty) == (-100.0, -100.0), name


@pytest.mark.parametrize(("flag", "name"), [("collision", "collision_penalty"), ("off_road", "off_road_penalty"),
                                            ("stuck", "stuck_penalty")])  # fmt: skip
def test_carla_adds_each_penalty_as_written(flag: str, name: str) -> None:
    """The term is the configured value itself, as CarRacing adds its own (tests/test_carracing.py)."""
    flags = {"collision": False, "off_road": False, "stuck": False} | {flag: True}
    inputs = RewardInputs(
        speed_mps=0.0, target_speed_mps=8.0, heading_error_rad=0.0, lateral_m=0.0, half_lane_width_m=1.75,
        progress_m=0.0, steer_change=0.0, throttle_brake_change=0.0, lane_invasion=False, **flags,
    )  # fmt: skip
    terms = compute_reward_terms(inputs, dataclasses.replace(RewardConfig(), **{name: -30.0}))
    assert terms[flag] == -30.0
    assert compute_reward_terms(dataclasses.replace(inputs, **{flag: False}), RewardConfig(**{name: -30.0}))[flag] == 0.0


def test_every_penalty_and_weight_field_states_its_sign_in_its_help() -> None:
    """A field named ``*_penalty`` is documented as <= 0 and added, a ``*_weight`` as >= 0, in both envs."""
    reward_fields = {f.name: f for f in dataclasses.fields(RewardConfig)}
    assert {n for n in reward_fields if n.endswith("_penalty")} == set(PENALTIES)
    assert {n for n in reward_fields if n.endswith("_weight")} == set(WEIGHTS)
    carracing_fields = {f.name: f for f in dataclasses.fields(CarRacingConfig)}
    penalties = [reward_fields[n] for n in PENALTIES] + [carracing_fields[n] for n in carracing_fields if "penalty" in n]
    for f in penalties:
        assert f.metadata["help"].startswith("penalty <= 0 added to the reward"), f.name
        assert f.default <= 0, f.name
    for name in WEIGHTS:
        assert reward_fields[name].metadata["help"].startswith("weight >= 0"), name


def test_check_penalty_returns_a_float() -> None:
    assert check_penalty("x", -3) == -3.0 and isinstance(check_penalty("x", 0), float)

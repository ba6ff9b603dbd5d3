"""Per-episode helpers of the CARLA env that need no server: end reasons, action checks, NPC choice."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from gymnasium import spaces

from sb3_carla_td3.envs.carla.config import CarlaConfig, RewardConfig
from sb3_carla_td3.envs.carla.episode import check_action, choose_npcs, end_reason

CONFIG = CarlaConfig(max_episode_steps=100, stuck_seconds=1.0, fixed_delta_seconds=0.05, route_end_tolerance_m=2.0)
SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)


def test_stuck_is_a_termination_when_it_is_penalised() -> None:
    config = CarlaConfig(stuck_seconds=1.0, fixed_delta_seconds=0.05, reward=RewardConfig(stuck_penalty=-5.0))
    assert end_reason(config, False, False, 50.0, 10, 20) == ("stuck", True)


@pytest.mark.parametrize(
    ("collision", "off_road", "remaining_m", "steps", "stuck_steps", "expected"),
    [
        (False, False, 50.0, 10, 0, (None, False)),
        (True, True, 1.0, 100, 20, ("collision", True)),  # terminations win over truncations
        (False, True, 1.0, 100, 20, ("off_route", True)),
        (False, False, 1.5, 100, 20, ("route_completed", True)),
        (False, False, 50.0, 100, 20, ("max_steps", False)),
        (False, False, 50.0, 99, 20, ("stuck", False)),  # 1.0 s / 0.05 s = 20 steps
        (False, False, 50.0, 99, 19, (None, False)),
    ],
)
def test_end_reason_and_its_kind(
    collision: bool, off_road: bool, remaining_m: float, steps: int, stuck_steps: int, expected: tuple
) -> None:
    assert end_reason(CONFIG, collision, off_road, remaining_m, steps, stuck_steps) == expected


def test_check_action_clips_finite_values() -> None:
    np.testing.assert_array_equal(check_action([3.0, -0.25], SPACE), [1.0, -0.25])


@pytest.mark.parametrize("action", [[0.0], [[0.0, 0.0]], [np.nan, 0.0], [0.0, -np.inf], "steer", None])
def test_check_action_rejects_wrong_shape_and_non_finite(action: object) -> None:
    with pytest.raises(ValueError, match="action must") as info:
        check_action(action, SPACE)
    assert str(SPACE) in str(info.value)


def _points(xs: list[float]) -> list[SimpleNamespace]:
    return [SimpleNamespace(location=SimpleNamespace(x=x, y=0.0)) for x in xs]


def test_npcs_avoid_the_ego_and_repeat_with_the_seed() -> None:
    points, blueprints = _points([0.0, 5.0, 30.0, 40.0, 50.0, 60.0]), ["a", "b", "c"]
    config = CarlaConfig(npc_vehicles=3, npc_exclusion_radius_m=10.0)
    first = choose_npcs(points, blueprints, config, np.array([2.0, 0.0]), np.random.default_rng(4))
    again = choose_npcs(points, blueprints, config, np.array([2.0, 0.0]), np.random.default_rng(4))
    assert first == again
    assert len(first[1]) == 3 and all(p.location.x >= 30.0 for p in first[1])


def test_npc_count_is_capped_by_free_spawn_points() -> None:
    config = CarlaConfig(npc_vehicles=50, npc_exclusion_radius_m=10.0)
    chosen_blueprints, chosen = choose_npcs(_points([0.0, 30.0, 40.0]), ["a"], config, np.zeros(2), np.random.default_rng(0))
    assert len(chosen) == len(chosen_blueprints) == 2

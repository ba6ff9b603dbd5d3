"""Reward terms of the CARLA env: ranges, signs, config weights, and progress paid per metre (not per index)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from sb3_carla_td3.envs.carla import rewards
from sb3_carla_td3.envs.carla.config import RewardConfig
from sb3_carla_td3.envs.carla.rewards import REWARD_TERMS, RewardInputs, compute_reward_terms
from sb3_carla_td3.envs.carla.routes import Route

TARGET = 8.0


def _inputs(**overrides: float | bool) -> RewardInputs:
    base = {
        "speed_mps": TARGET,
        "target_speed_mps": TARGET,
        "heading_error_rad": 0.0,
        "lateral_m": 0.0,
        "half_lane_width_m": 1.75,
        "progress_m": 0.4,
        "steer_change": 0.0,
        "throttle_brake_change": 0.0,
        "lane_invasion": False,
        "collision": False,
        "off_road": False,
    }
    return RewardInputs(**{**base, **overrides})


def test_efficiency_peaks_at_target_speed() -> None:
    speeds = np.linspace(0.0, 3 * TARGET, 61)
    values = [rewards.efficiency(v, 0.0, TARGET) for v in speeds]
    assert speeds[int(np.argmax(values))] == pytest.approx(TARGET)
    assert max(values) == pytest.approx(1.0)


def test_efficiency_is_zero_when_stopped_and_negative_backwards() -> None:
    assert rewards.efficiency(0.0, 0.0, TARGET) == 0.0
    assert rewards.efficiency(TARGET / 2, math.pi, TARGET) < 0.0


@pytest.mark.parametrize("speed", [0.0, 4.0, 8.0, 16.0, 40.0])
@pytest.mark.parametrize("heading", [-math.pi, -1.0, 0.0, 2.0])
def test_efficiency_stays_in_range(speed: float, heading: float) -> None:
    assert -1.0 <= rewards.efficiency(speed, heading, TARGET) <= 1.0


def test_lane_keeping_is_zero_on_centre_line_and_minus_one_at_full_error() -> None:
    assert rewards.lane_keeping(0.0, 1.75, 0.0, 0.5) == 0.0
    assert rewards.lane_keeping(-5.0, 1.75, 2.0, 0.5) == -1.0


def test_lane_keeping_is_symmetric_in_the_side() -> None:
    assert rewards.lane_keeping(0.7, 1.75, 0.1, 0.5) == rewards.lane_keeping(-0.7, 1.75, -0.1, 0.5)


def test_comfort_penalises_action_changes_up_to_minus_one() -> None:
    assert rewards.comfort(0.0, 0.0) == 0.0
    assert rewards.comfort(2.0, -2.0) == -1.0
    assert rewards.comfort(0.5, 0.0) < 0.0


def test_safety_counts_lane_invasion_and_wrong_way() -> None:
    assert rewards.safety(False, 0.3) == 0.0
    assert rewards.safety(True, 0.0) == -1.0
    assert rewards.safety(False, math.pi) == pytest.approx(-1.0)
    assert rewards.safety(True, -math.pi) == pytest.approx(-2.0)


def test_terms_have_the_documented_keys() -> None:
    assert tuple(compute_reward_terms(_inputs(), RewardConfig())) == REWARD_TERMS


@pytest.mark.parametrize(
    ("weight", "term", "inputs"),
    [
        ("efficiency_weight", "efficiency", {}),
        ("lane_keeping_weight", "lane_keeping", {"lateral_m": 0.5}),
        ("comfort_weight", "comfort", {"steer_change": 0.4}),
        ("safety_weight", "safety", {"lane_invasion": True}),
        ("progress_weight", "progress", {"progress_m": 0.3}),
    ],
)
def test_each_weight_scales_only_its_term(weight: str, term: str, inputs: dict) -> None:
    config = RewardConfig()
    doubled = dataclasses.replace(config, **{weight: 2 * getattr(config, weight)})
    before, after = compute_reward_terms(_inputs(**inputs), config), compute_reward_terms(_inputs(**inputs), doubled)
    assert before[term] != 0.0
    assert after[term] == pytest.approx(2 * before[term])
    assert {k: v for k, v in after.items() if k != term} == {k: v for k, v in before.items() if k != term}


@pytest.mark.parametrize(
    ("flag", "term", "penalty"),
    [("collision", "collision", "collision_penalty"), ("off_road", "off_road", "off_road_penalty")],
)
def test_terminal_penalties_come_from_the_config(flag: str, term: str, penalty: str) -> None:
    config = dataclasses.replace(RewardConfig(), **{penalty: -37.5})
    assert compute_reward_terms(_inputs(**{flag: True}), config)[term] == -37.5
    assert compute_reward_terms(_inputs(), config)[term] == 0.0


@pytest.mark.parametrize("spacing_m", [0.01, 0.5, 5.0])
def test_progress_reward_over_a_drive_equals_weight_times_distance(spacing_m: float) -> None:
    """Progress is per metre of arc length: the route's sampling density cannot change the total."""
    corners = np.array([[0.0, 0.0], [40.0, 0.0], [40.0, 30.0]])
    route = Route(corners).resampled(spacing_m)
    config = RewardConfig(progress_weight=0.5)
    s_previous, total = 0.0, 0.0
    for s in np.linspace(0.0, route.length_m, 141)[1:]:
        x, y = route.points_at(np.array(s))
        s_now = route.project(float(x), float(y), s_hint_m=s_previous).s_m
        total += compute_reward_terms(_inputs(progress_m=s_now - s_previous), config)["progress"]
        s_previous = s_now
    assert total == pytest.approx(config.progress_weight * route.length_m, rel=1e-6)

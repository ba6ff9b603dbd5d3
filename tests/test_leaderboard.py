"""The CARLA Leaderboard's formula on hand-made episodes: route completion, penalty coefficients, driving score,
infractions per km, and the tracker that reads CarlaEnv's infos."""

from __future__ import annotations

from typing import Any

import pytest

from sb3_carla_td3.validation.leaderboard import (
    DrivingEpisode,
    LeaderboardTracker,
    aggregate_scores,
    collision_kind,
    driving_score,
    empty_infractions,
    episode_scores,
    infraction_penalty,
    leaderboard_table,
    route_completion,
    tensorboard_values,
)


def episode(length_m: float = 1000.0, progress_m: float = 0.0, completed: bool = False, off_road_m: float = 0.0,
            **counts: int) -> DrivingEpisode:  # fmt: skip
    return DrivingEpisode(length_m, progress_m, completed, off_road_m, empty_infractions() | counts)


@pytest.mark.parametrize(
    ("counts", "penalty"),
    [
        ({}, 1.0),
        ({"collisions_pedestrian": 1}, 0.50),
        ({"collisions_vehicle": 1}, 0.60),
        ({"collisions_static": 1}, 0.65),
        ({"red_light": 1}, 0.70),
        ({"stop_sign": 1}, 0.80),
        ({"collisions_vehicle": 2, "collisions_static": 1}, 0.60 * 0.60 * 0.65),
        ({"lane_invasion": 7, "agent_blocked": 1, "route_deviation": 1}, 1.0),  # counted, no coefficient
    ],
)
def test_penalty_is_the_product_of_the_leaderboard_coefficients(counts: dict[str, int], penalty: float) -> None:
    assert infraction_penalty(counts) == pytest.approx(penalty)


def test_unmeasured_kinds_do_not_change_the_penalty() -> None:
    assert infraction_penalty({"red_light": None, "stop_sign": None, "collisions_vehicle": 1}) == pytest.approx(0.6)


def test_off_road_share_multiplies_the_penalty() -> None:
    scores = episode_scores(episode(progress_m=500.0, off_road_m=100.0, collisions_static=1))
    assert scores["off_road_percent"] == pytest.approx(10.0)
    assert scores["infraction_penalty"] == pytest.approx(0.65 * 0.9)
    assert scores["driving_score"] == pytest.approx(50.0 * 0.65 * 0.9)


@pytest.mark.parametrize(
    ("progress_m", "completed", "expected"), [(250.0, False, 25.0), (998.5, True, 100.0), (1200.0, False, 100.0)]
)
def test_route_completion_is_the_share_driven_and_100_once_completed(
    progress_m: float, completed: bool, expected: float
) -> None:
    assert route_completion(episode(progress_m=progress_m, completed=completed)) == pytest.approx(expected)


def test_driving_score_is_route_completion_times_penalty() -> None:
    assert driving_score(80.0, 0.6) == pytest.approx(48.0)
    assert driving_score(0.0, 0.5) == 0.0


def test_aggregate_means_scores_and_divides_total_infractions_by_total_km_driven() -> None:
    first = episode(length_m=2000.0, progress_m=1000.0, collisions_vehicle=1, lane_invasion=3)  # 50 %, 1 km
    second = episode(length_m=1000.0, completed=True, collisions_pedestrian=1)  # 100 %, 1 km
    summary = aggregate_scores([first, second])
    assert summary["route_completion"] == pytest.approx(75.0)
    assert summary["infraction_penalty"] == pytest.approx((0.6 + 0.5) / 2)
    assert summary["driving_score"] == pytest.approx((50.0 * 0.6 + 100.0 * 0.5) / 2)
    assert summary["driving_score_std"] == pytest.approx(10.0)
    assert summary["driven_km"] == pytest.approx(2.0)
    assert summary["infractions"]["lane_invasion"] == 3 and summary["infractions_per_km"]["lane_invasion"] == 1.5
    assert summary["infractions"]["red_light"] is None and summary["infractions_per_km"]["red_light"] is None


def test_an_episode_that_never_moved_counts_one_metre_driven() -> None:
    summary = aggregate_scores([episode(collisions_static=1)])
    assert summary["driven_km"] == pytest.approx(0.001)
    assert summary["infractions_per_km"]["collisions_static"] == pytest.approx(1000.0)


def test_aggregate_needs_episodes() -> None:
    with pytest.raises(ValueError, match="at least one episode"):
        aggregate_scores([])


@pytest.mark.parametrize(
    ("type_id", "kind"),
    [
        ("walker.pedestrian.0001", "collisions_pedestrian"),
        ("vehicle.audi.a2", "collisions_vehicle"),
        ("static.pole", "collisions_static"),
        ("traffic.traffic_light", "collisions_static"),
        ("", "collisions_static"),  # 0.9.16 may report a map object with no actor (not confirmed offline)
        (None, "collisions_static"),
    ],
)
def test_collisions_are_sorted_by_the_other_actors_type(type_id: str | None, kind: str) -> None:
    assert collision_kind(type_id) == kind


def step(progress_m: float, reason: str | None = None, **info: Any) -> dict[str, Any]:
    return {"route_length_m": 100.0, "route_progress_m": progress_m, "reason": reason} | info


def test_tracker_counts_what_the_env_reports() -> None:
    tracker = LeaderboardTracker()
    tracker.start({"route_length_m": 100.0})
    for info in (
        step(10.0, lane_invasions=1),
        step(20.0, off_driving_lane=True),  # leaves the road: one off-road infraction...
        step(25.0, off_driving_lane=True),  # ...however long it stays off
        step(30.0, off_driving_lane=False, collision_types=["vehicle.audi.a2", "static.fence"]),
        step(31.0, off_driving_lane=True),  # a second excursion
        step(32.0, "stuck"),
    ):
        tracker.update(info)
    record = tracker.finish()
    assert record is not None and tracker.finish() is None
    # a step that ends off the road counts its whole progress (the leaderboard adds each tick's distance so)
    assert record.progress_m == 32.0 and record.off_road_m == pytest.approx(10.0 + 5.0 + 1.0)
    assert record.end_reason == "stuck" and not record.completed
    assert record.infractions == empty_infractions() | {
        "lane_invasion": 1, "off_road": 2, "collisions_vehicle": 1, "collisions_static": 1, "agent_blocked": 1
    }  # fmt: skip


def test_tracker_route_end_and_deviation() -> None:
    tracker = LeaderboardTracker()
    tracker.start({"route_length_m": 100.0})
    tracker.update(step(99.0, "route_completed"))
    done = tracker.finish()
    tracker.start({"route_length_m": 100.0})
    tracker.update(step(40.0, "off_route"))
    deviated = tracker.finish()
    assert done is not None and route_completion(done) == 100.0
    assert deviated is not None and deviated.infractions["route_deviation"] == 1 and route_completion(deviated) == 40.0


def test_tracker_gives_nothing_for_an_env_without_routes() -> None:
    tracker = LeaderboardTracker()
    tracker.start({})
    tracker.update({"reason": "lap_finished"})
    assert tracker.finish() is None


def test_table_and_tensorboard_keys_show_every_kind() -> None:
    summary = aggregate_scores([episode(progress_m=500.0, collisions_vehicle=1)])
    table = leaderboard_table(summary)
    assert "| collisions_vehicle | 0.60 | 1 | 2 |" in table and "| red_light | 0.70 | n/a | n/a |" in table
    assert "| **mean** | **50.0** | **0.600** | **30.0** |" in table
    values = tensorboard_values(summary)
    assert values["eval/driving_score"] == pytest.approx(30.0)
    assert values["eval/infractions_per_km/collisions_vehicle"] == pytest.approx(2.0)
    assert "eval/infractions_per_km/red_light" not in values

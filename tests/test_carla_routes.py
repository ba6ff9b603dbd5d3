"""Routes: arc-length projection and padding (pure numpy), and A* planning on the offline mini-town map."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sb3_carla_td3.envs.routes import (
    Route,
    RouteNotFoundError,
    RoutePlanner,
    load_waypoint_file,
    to_vehicle_frame,
    wrap_angle,
)
from sb3_carla_td3.errors import ConfigError

XODR = Path(__file__).parent / "data" / "mini_town.xodr"
RESOLUTION_M = 2.0


# ---------------------------------------------------------------- pure route geometry
def test_projection_gives_arc_length_and_signed_lateral() -> None:
    route = Route(np.array([[10.0, 5.0], [110.0, 5.0]]))
    right = route.project(30.0, 6.5)  # CARLA is left-handed: +y is to the right of a route along +x
    left = route.project(30.0, 3.0)
    assert right.s_m == pytest.approx(20.0) and right.lateral_m == pytest.approx(1.5)
    assert left.lateral_m == pytest.approx(-2.0)
    assert right.tangent_yaw_rad == pytest.approx(0.0)


def test_projection_window_follows_the_hint_on_a_route_crossing_itself() -> None:
    # Out along y = 0, round a loop and back along y = 0: s = 10 and s = 110 lie at the same place.
    route = Route(
        np.array(
            [[0.0, 0.0], [30.0, 0.0], [30.0, 20.0], [20.0, 20.0], [20.0, -10.0], [10.0, -10.0], [10.0, 5.0], [-50.0, 5.0]]
        )
    )
    same_place = route.points_at(np.array(10.0))
    late = route.project(float(same_place[0]), float(same_place[1]), s_hint_m=105.0)
    early = route.project(float(same_place[0]), float(same_place[1]), s_hint_m=8.0)
    assert early.s_m == pytest.approx(10.0)
    assert late.s_m > 100.0


def test_points_ahead_pad_with_the_last_point_not_zeros() -> None:
    route = Route(np.array([[100.0, 50.0], [120.0, 50.0]]))
    ahead = route.points_ahead(15.0, 5.0, 6)
    np.testing.assert_allclose(ahead[0], [120.0, 50.0])  # s = 20 is the end
    np.testing.assert_allclose(ahead, np.tile([120.0, 50.0], (6, 1)))


def test_vehicle_frame_is_x_forward_y_right() -> None:
    world = np.array([[12.0, 3.0], [10.0, 5.0]])
    np.testing.assert_allclose(to_vehicle_frame(world, 10.0, 3.0, 0.0), [[2.0, 0.0], [0.0, 2.0]], atol=1e-12)
    # Facing +y (yaw 90 deg): the point at +y is ahead, the point at +x is to the left.
    np.testing.assert_allclose(to_vehicle_frame(world, 10.0, 3.0, math.pi / 2), [[0.0, -2.0], [2.0, 0.0]], atol=1e-12)


@pytest.mark.parametrize("angle", [-7.0, -math.pi, 0.0, 3.0, 10.0])
def test_wrap_angle_stays_in_range_and_keeps_direction(angle: float) -> None:
    wrapped = wrap_angle(angle)
    assert -math.pi <= wrapped < math.pi
    assert math.cos(wrapped) == pytest.approx(math.cos(angle)) and math.sin(wrapped) == pytest.approx(math.sin(angle))


def test_resampled_route_keeps_ends_and_length() -> None:
    route = Route(np.array([[0.0, 0.0], [3.0, 4.0], [3.0, 10.0]]))
    fine = route.resampled(0.25)
    assert fine.length_m == pytest.approx(route.length_m)
    np.testing.assert_allclose(fine.points[[0, -1]], route.points[[0, -1]])
    assert np.diff(fine.s).max() <= 0.25 + 1e-9


def test_sliced_route_starts_and_ends_exactly() -> None:
    route = Route(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]))
    part = route.sliced(3.3, 14.2)
    assert part.length_m == pytest.approx(14.2 - 3.3)
    np.testing.assert_allclose(part.points[[0, -1]], [[3.3, 0.0], [10.0, 4.2]])


@pytest.mark.parametrize(
    "points", [np.zeros((1, 2)), np.zeros((3, 3)), np.array([[0.0, 0.0], [np.nan, 1.0]]), np.array([[1.0, 1.0], [1.0, 1.0]])]
)
def test_route_rejects_degenerate_points(points: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"points|route"):
        Route(points)


def test_waypoint_file_reads_x_y_speed_rows(tmp_path: Path) -> None:
    path = tmp_path / "route.txt"
    path.write_text("# x, y, target speed\n317.74, 129.49, 8.333\n300.0, 129.49, 8.333\n\n92.34 86.73 2.5\n")
    np.testing.assert_allclose(
        load_waypoint_file(path), [[317.74, 129.49, 8.333], [300.0, 129.49, 8.333], [92.34, 86.73, 2.5]]
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1, 2\n3, 4\n", "line 1"),
        ("1, 2, 3\n", "at least 2"),
        ("1, 2, 3\n4, x, 6\n", "line 2"),
        ("1,2,3\n4,5,inf\n", "line 2"),
    ],
)
def test_waypoint_file_errors_name_the_file_and_line(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_waypoint_file(path)
    assert "bad.csv" in str(info.value)


def test_missing_waypoint_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_waypoint_file(tmp_path / "absent.csv")


# ---------------------------------------------------------------- the offline map
@pytest.fixture(scope="module")
def carla() -> Any:
    return pytest.importorskip("carla")


@pytest.fixture(scope="module")
def town(carla: Any) -> Any:
    return carla.Map("mini_town", XODR.read_text())


@pytest.fixture(scope="module")
def planner(town: Any) -> RoutePlanner:
    return RoutePlanner(town, RESOLUTION_M)


def _driving_waypoints(town: Any, carla: Any) -> list[Any]:
    return [w for w in town.generate_waypoints(10.0) if w.lane_type == carla.LaneType.Driving and not w.is_junction]


def test_fixture_map_has_junctions_and_curves(town: Any) -> None:
    waypoints = town.generate_waypoints(2.0)
    assert len(town.get_topology()) > 0
    assert any(w.is_junction for w in waypoints)
    yaws = {round(w.transform.rotation.yaw) % 360 for w in waypoints if not w.is_junction}
    assert len(yaws) > 8  # curved roads give many headings, a grid would give 4


def test_junction_lanes_branch(town: Any, carla: Any) -> None:
    before_junction = [
        w
        for w in town.generate_waypoints(2.0)
        if not w.is_junction and w.next(12.0) and len({(n.road_id, n.lane_id) for n in w.next(12.0)}) > 1
    ]
    assert before_junction, "no waypoint has two successors: the junction links were not built"


def _pairs(town: Any, carla: Any, count: int) -> list[tuple[Any, Any]]:
    waypoints = _driving_waypoints(town, carla)
    rng = np.random.default_rng(0)
    return [tuple(waypoints[i] for i in rng.choice(len(waypoints), 2, replace=False)) for _ in range(count)]


def test_every_pair_of_driving_lanes_is_connected(town: Any, carla: Any, planner: RoutePlanner) -> None:
    for start, end in _pairs(town, carla, 30):
        route = planner.plan(start, end)
        assert route.length_m >= start.transform.location.distance(end.transform.location) - 1e-6


def test_route_starts_and_ends_at_the_waypoints(town: Any, carla: Any, planner: RoutePlanner) -> None:
    for start, end in _pairs(town, carla, 10):
        route = planner.plan(start, end)
        s, e = start.transform.location, end.transform.location
        np.testing.assert_allclose(route.points[0], [s.x, s.y], atol=1e-6)
        np.testing.assert_allclose(route.points[-1], [e.x, e.y], atol=1e-6)


def test_route_is_continuous_and_follows_lane_directions(town: Any, carla: Any, planner: RoutePlanner) -> None:
    for start, end in _pairs(town, carla, 10):
        route = planner.plan(start, end)
        steps = np.linalg.norm(np.diff(route.points, axis=0), axis=1)
        assert steps.max() <= RESOLUTION_M + 1e-6
        for (x0, y0), (x1, y1) in zip(route.points[:-1], route.points[1:], strict=True):
            lane = town.get_waypoint(carla.Location(x=(x0 + x1) / 2, y=(y0 + y1) / 2, z=0.0))
            if lane.is_junction:
                continue
            lane_xy = (lane.transform.location.x, lane.transform.location.y)
            assert math.dist(lane_xy, ((x0 + x1) / 2, (y0 + y1) / 2)) < 0.5  # on a lane centre
            heading_error = wrap_angle(math.atan2(y1 - y0, x1 - x0) - math.radians(lane.transform.rotation.yaw))
            assert abs(heading_error) < math.radians(30)  # in the lane's driving direction


def test_route_to_the_opposite_lane_turns_through_junctions(town: Any, carla: Any, planner: RoutePlanner) -> None:
    start = town.get_waypoint(carla.Location(x=-30.0, y=1.75, z=0.0))  # lane heading east towards junction 1000
    end = town.get_waypoint(carla.Location(x=-40.0, y=-1.75, z=0.0))  # the opposite lane, 10 m behind
    route = planner.plan(start, end)
    on_junction = [town.get_waypoint(carla.Location(x=float(x), y=float(y), z=0.0)).is_junction for x, y in route.points]
    assert sum(on_junction) > 0
    assert route.length_m > 100.0  # no U-turn on the spot: it must drive round a loop


def test_projection_progress_matches_distance_driven_on_a_planned_route(town: Any, carla: Any, planner: RoutePlanner) -> None:
    start, end = _pairs(town, carla, 1)[0]
    route = planner.plan(start, end)
    for s in np.linspace(0.0, route.length_m, 25):
        x, y = route.points_at(np.array(s))
        assert route.project(float(x), float(y), s_hint_m=max(s - 1.0, 0.0)).s_m == pytest.approx(s, abs=1e-6)


def test_planning_from_a_waypoint_to_itself_drives_a_loop(town: Any, carla: Any, planner: RoutePlanner) -> None:
    waypoint = _driving_waypoints(town, carla)[0]
    route = planner.plan(waypoint, waypoint)
    np.testing.assert_allclose(route.points[0], route.points[-1], atol=1e-6)
    assert route.length_m > 100.0


ONE_ROAD_XODR = """<?xml version="1.0" standalone="yes"?>
<OpenDRIVE><header revMajor="1" revMinor="4" name="one_road"><geoReference><![CDATA[+proj=tmerc]]></geoReference></header>
<road name="r" length="100" id="1" junction="-1"><link/><planView>
<geometry s="0" x="0" y="0" hdg="0" length="100"><line/></geometry></planView>
<lanes><laneSection s="0">
<left><lane id="1" type="driving" level="false"><link/><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane></left>
<center><lane id="0" type="none" level="false"/></center>
<right><lane id="-1" type="driving" level="false"><link/><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane></right>
</laneSection></lanes></road></OpenDRIVE>
"""


def test_unreachable_lane_raises_route_not_found(carla: Any) -> None:
    one_road = carla.Map("one_road", ONE_ROAD_XODR)
    forward = one_road.get_waypoint(carla.Location(x=20.0, y=1.75, z=0.0))
    backward = one_road.get_waypoint(carla.Location(x=60.0, y=-1.75, z=0.0))
    assert forward.lane_id != backward.lane_id
    with pytest.raises(RouteNotFoundError, match="no lane-following path"):
        RoutePlanner(one_road, RESOLUTION_M).plan(forward, backward)

"""Routes: arc-length projection and padding (pure numpy), and A* planning on the offline mini-town map."""

from __future__ import annotations

import importlib.util
import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sb3_carla_td3.envs.carla.routes import (
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


# ---------------------------------------------------------------- roads split into lane sections
SECTIONS_XODR = Path(__file__).parent / "data" / "mini_town_sections.xodr"


@pytest.fixture(scope="module")
def sections_town(carla: Any) -> Any:
    return carla.Map("mini_town_sections", SECTIONS_XODR.read_text())


def _assert_route_follows_lanes(town: Any, carla: Any, route: Route, resolution_m: float, merges: bool = False) -> None:
    """Every route segment off junctions lies on a lane centre and points in that lane's driving direction.

    With ``merges`` (a map where an added lane merges into its neighbour), a segment may lie up to a lane width off
    a centre line and 35 degrees off its direction: the route changes lane at 30 degrees there.
    """
    off_centre_m, off_direction = (3.6, math.radians(35)) if merges else (0.5, math.radians(30))
    steps = np.linalg.norm(np.diff(route.points, axis=0), axis=1)
    assert steps.max() <= resolution_m + 1e-6
    for (x0, y0), (x1, y1) in zip(route.points[:-1], route.points[1:], strict=True):
        lane = town.get_waypoint(carla.Location(x=(x0 + x1) / 2, y=(y0 + y1) / 2, z=0.0))
        if lane.is_junction:
            continue
        lane_xy = (lane.transform.location.x, lane.transform.location.y)
        assert math.dist(lane_xy, ((x0 + x1) / 2, (y0 + y1) / 2)) < off_centre_m
        heading_error = wrap_angle(math.atan2(y1 - y0, x1 - x0) - math.radians(lane.transform.rotation.yaw))
        assert abs(heading_error) < off_direction, f"segment ({x0:.1f}, {y0:.1f}) -> ({x1:.1f}, {y1:.1f}) against its lane"


def _assert_progress_monotone(route: Route, start: Any, step_m: float = 1.0, max_lateral_m: float = 0.5) -> None:
    """Drive a point along the lanes from ``start`` (at each branch taking the successor that follows the route):
    its projected progress never falls back, it stays on the route and it reaches the route's end."""
    waypoint, s_prev = start, 0.0
    for _ in range(int(route.length_m / step_m) + 50):
        if s_prev >= route.length_m - 2.0 * step_m:
            return
        candidates = waypoint.next(step_m)
        assert candidates, f"lane ends at s = {s_prev:.1f} m of a {route.length_m:.1f} m route"
        # Branches overlap where they leave a junction entry: choose by where each leads 5 m further on.
        target = route.points_at(np.array(s_prev + step_m + 5.0))
        best = int(np.argmin([min(math.dist(_xy_of(a), target) for a in w.next(5.0) or [w]) for w in candidates]))
        waypoint = candidates[best]
        projection = route.project(*_xy_of(waypoint), s_hint_m=s_prev)
        assert abs(projection.lateral_m) < max_lateral_m, f"left the route at s = {s_prev:.1f} m"
        assert projection.s_m >= s_prev - 1e-6, f"progress fell back from {s_prev:.2f} to {projection.s_m:.2f} m"
        s_prev = projection.s_m
    pytest.fail(f"progress stalled at {s_prev:.1f} m of {route.length_m:.1f} m")


def _xy_of(waypoint: Any) -> tuple[float, float]:
    return waypoint.transform.location.x, waypoint.transform.location.y


def test_sections_fixture_splits_roads_into_lane_sections(sections_town: Any) -> None:
    sections = {(entry.road_id, entry.section_id) for entry, _ in sections_town.get_topology()}
    assert {(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (4, 0), (4, 1)} <= sections


@pytest.mark.parametrize("resolution_m", [1.0, 2.0, 3.0])
def test_multi_section_roads_give_lane_following_routes_with_monotone_progress(
    sections_town: Any, carla: Any, resolution_m: float
) -> None:
    planner = RoutePlanner(sections_town, resolution_m)  # raised "distance > 0.0" at 2 m before lane sections
    rng = np.random.default_rng(1)
    on_split_roads = [w for w in _driving_waypoints(sections_town, carla) if w.road_id in (1, 2, 4)]
    anywhere = _driving_waypoints(sections_town, carla)
    starts, ends = rng.choice(len(on_split_roads), 12), rng.choice(len(anywhere), 12)
    pairs = [(on_split_roads[i], anywhere[j]) for i, j in zip(starts, ends, strict=True)]
    # Start before a section boundary and end just after it, on the same lane: no detour, no loop.
    before = sections_town.get_waypoint(carla.Location(x=-20.0, y=1.75, z=0.0))  # road 1, lane going towards s = 0
    pairs.append((sections_town.get_waypoint(carla.Location(x=-24.0, y=-1.75, z=0.0)), before))
    for start, end in pairs:
        route = planner.plan(start, end)
        _assert_route_follows_lanes(sections_town, carla, route, resolution_m)
        _assert_progress_monotone(route, start)


def test_route_across_one_section_boundary_is_direct(sections_town: Any, carla: Any) -> None:
    for resolution_m in (1.0, 2.0, 3.0):
        planner = RoutePlanner(sections_town, resolution_m)
        start = sections_town.get_waypoint(carla.Location(x=-20.0, y=-1.75, z=0.0))  # road 1, s = 10, lane -1
        end = sections_town.get_waypoint(carla.Location(x=-40.0, y=-1.75, z=0.0))  # s = 30, past the split at 17.3
        assert (start.section_id, end.section_id) == (0, 1)
        route = planner.plan(start, end)
        assert route.length_m == pytest.approx(20.0, abs=0.1)


@pytest.fixture(scope="module")
def added_lane_town(carla: Any) -> Any:
    """The mini town with road 2 in three lane sections, the middle one with an added right lane -2."""
    spec = importlib.util.spec_from_file_location("make_mini_town", Path(__file__).parent / "data" / "make_mini_town.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return carla.Map("mini_town_added_lane", module.build_xodr({2: (10.0, 30.0)}, "mini_town_added_lane", {2: 1}))


@pytest.mark.parametrize("resolution_m", [1.0, 2.0, 3.0])
def test_a_lane_added_mid_road_is_planned_from_and_unreachable_as_the_topology_says(
    added_lane_town: Any, carla: Any, resolution_m: float
) -> None:
    planner = RoutePlanner(added_lane_town, resolution_m)
    added = [w for w in added_lane_town.generate_waypoints(2.0) if (w.road_id, w.lane_id) == (2, -2)]
    assert added, "the fixture has no added lane"
    start = added[len(added) // 2]
    successors = _topology_successors(added_lane_town)
    others = [w for w in _driving_waypoints(added_lane_town, carla) if w.lane_id != -2]
    for end in others[::4]:
        route = planner.plan(start, end)  # merges back into lane -1 and drives on
        _assert_route_follows_lanes(added_lane_town, carla, route, resolution_m, merges=True)
        _assert_progress_monotone(route, start, max_lateral_m=3.6)  # the merge steps one lane width sideways
    # Nothing leads into the added lane (libcarla links no lane into it; only a lane change would): no route.
    assert _bfs_hops(successors, _lane_key(others[0]), _lane_key(start)) is None
    with pytest.raises(RouteNotFoundError):
        planner.plan(others[0], start)


# ---------------------------------------------------------------- CARLA's own Town01
TOWN01_XODR = Path(__file__).resolve().parents[2] / "shared" / "maps" / "Town01.xodr"


@pytest.fixture(scope="module")
def town01(carla: Any) -> Any:
    if not TOWN01_XODR.is_file():
        pytest.skip(f"CARLA's Town01.xodr is not at {TOWN01_XODR} (only a checkout next to ../shared/maps has it)")
    return carla.Map("Town01", TOWN01_XODR.read_text())


def _lane_key(waypoint: Any) -> tuple[int, int, int]:
    return waypoint.road_id, waypoint.section_id, waypoint.lane_id


def _topology_successors(town: Any) -> dict[tuple[int, int, int], set[tuple[int, int, int]]]:
    successors: dict[tuple[int, int, int], set[tuple[int, int, int]]] = {}
    for entry, exit_ in town.get_topology():
        successors.setdefault(_lane_key(entry), set()).add(_lane_key(exit_))
    return successors


def _bfs_hops(successors: dict, start: tuple, goal: tuple) -> int | None:
    """Fewest topology segments from the one after ``start`` to ``goal`` (None: unreachable)."""
    frontier, seen, hops = list(successors.get(start, ())), set(), 1
    while frontier:
        if goal in frontier:
            return hops
        seen.update(frontier)
        frontier = list({n for f in frontier for n in successors.get(f, ()) if n not in seen})
        hops += 1
    return None


@pytest.mark.parametrize("resolution_m", [1.0, 2.0, 3.0])
def test_town01_routes_agree_with_a_bfs_over_the_topology(town01: Any, carla: Any, resolution_m: float) -> None:
    planner = RoutePlanner(town01, resolution_m)
    successors = _topology_successors(town01)
    # Off lane-section ends: a waypoint on a boundary is as much the end of the lane before it as the start of
    # its own, and get_waypoint cannot tell the two apart.
    waypoints = [
        w
        for w in _driving_waypoints(town01, carla)
        if all(_lane_key(n) == _lane_key(w) for n in [*w.next(1.5), *w.previous(1.5)])
    ]
    rng = np.random.default_rng(int(resolution_m))
    pairs = [tuple(waypoints[i] for i in rng.choice(len(waypoints), 2, replace=False)) for _ in range(100)]
    for start, end in pairs:
        same_lane_ahead = _lane_key(start) == _lane_key(end) and (end.s - start.s) * (-1 if start.lane_id > 0 else 1) > 0
        hops = 0 if same_lane_ahead else _bfs_hops(successors, _lane_key(start), _lane_key(end))
        if hops is None:
            with pytest.raises(RouteNotFoundError):
                planner.plan(start, end)
            continue
        route = planner.plan(start, end)
        s, e = start.transform.location, end.transform.location
        np.testing.assert_allclose(route.points[[0, -1]], [[s.x, s.y], [e.x, e.y]], atol=1e-6)
        assert route.length_m >= s.distance(e) - 1e-3  # carla.Location is float32
        # The lanes the route drives through form a walk in the topology graph (junction lanes may overlap, so
        # only the ordinary lanes on either side of a junction are compared) that is at least the BFS length.
        lanes = []
        for x, y in route.points[:: max(1, int(1.0 / resolution_m))]:
            lane = town01.get_waypoint(carla.Location(x=float(x), y=float(y), z=0.0))
            if not lane.is_junction and (not lanes or lanes[-1] != _lane_key(lane)):
                lanes.append(_lane_key(lane))
        assert lanes[0] == _lane_key(start) and lanes[-1] == _lane_key(end)
        for a, b in itertools.pairwise(lanes):
            two_steps = {c for n in successors.get(a, ()) for c in successors.get(n, ())}
            assert b in successors.get(a, set()) | two_steps, f"route jumps from lane {a} to lane {b}"
        assert len(lanes) - 1 >= (hops + 1) // 2  # a junction lane between two ordinary lanes is one hidden hop
        _assert_route_follows_lanes(town01, carla, route, resolution_m)

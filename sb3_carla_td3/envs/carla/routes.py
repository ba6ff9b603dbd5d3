"""Routes for the CARLA env: an arc-length polyline (:class:`Route`) and an A* planner over a ``carla.Map``.

The ``carla`` wheel ships no ``agents`` package (no ``GlobalRoutePlanner``), so :class:`RoutePlanner` builds
its own graph from ``Map.get_topology()``: one edge per topology segment (a lane from its entry to its exit
waypoint, sampled with ``Waypoint.next`` within its lane section), nodes merged where an exit meets an entry. Lane
changes are not planned; a route follows lanes and takes junction turns.

Progress is the arc length of the ego's projection onto the route polyline, searched in a window around the
previous projection, so a route that passes the same place twice never jumps. This module does not import
``carla``: the planner only calls methods on the map and waypoint objects it is given.

Coordinates are CARLA's (left-handed: x forward, y right, yaw from +x towards +y); the signed lateral
deviation is positive when the point lies to the right of the route.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sb3_carla_td3.errors import ConfigError

#: Topology end points closer than this (metres) are the same graph node.
NODE_MERGE_DISTANCE_M = 0.5
#: Steepest angle (rad) at which a route leaves a lane that merges sideways into its neighbour.
MERGE_ANGLE_RAD = math.radians(30.0)


class RouteNotFoundError(ValueError):
    """No lane-following path joins the requested start and end on this map."""


@dataclass(frozen=True)
class RouteProjection:
    """Where a point lies relative to a route.

    :param s_m: arc length of the closest route point in metres, in [0, route length].
    :param lateral_m: signed distance to the route in metres (positive: right of the route).
    :param tangent_yaw_rad: route direction at the projection in rad, in [-pi, pi].
    :param half_lane_width_m: half the lane width at the projection in metres.
    :param target_speed_mps: target speed at the projection in m/s.
    """

    s_m: float
    lateral_m: float
    tangent_yaw_rad: float
    half_lane_width_m: float
    target_speed_mps: float


class Route:
    """A polyline with cumulative arc length, lane widths and target speeds per point.

    :param points_xy: route points in metres, shape (N, 2) with N >= 2, in driving order.
    :param half_lane_widths_m: half lane width at each point in metres, shape (N,); None uses 1.75 m.
    :param target_speeds_mps: target speed at each point in m/s, shape (N,); None uses NaN (the env then
        uses the reward config's target speed).
    """

    def __init__(
        self,
        points_xy: np.ndarray,
        half_lane_widths_m: np.ndarray | None = None,
        target_speeds_mps: np.ndarray | None = None,
    ) -> None:
        points = np.asarray(points_xy, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or not np.all(np.isfinite(points)):
            raise ValueError(f"points_xy must be a finite array of shape (N, 2), got shape {points.shape}")
        n = len(points)
        widths = np.full(n, 1.75) if half_lane_widths_m is None else np.asarray(half_lane_widths_m, dtype=np.float64)
        speeds = np.full(n, np.nan) if target_speeds_mps is None else np.asarray(target_speeds_mps, dtype=np.float64)
        if widths.shape != (n,) or speeds.shape != (n,):
            raise ValueError(
                f"half_lane_widths_m and target_speeds_mps must have shape ({n},), got {widths.shape} and {speeds.shape}"
            )
        # Drop repeated points so every segment has a direction.
        keep = np.ones(n, dtype=bool)
        keep[1:] = np.linalg.norm(np.diff(points, axis=0), axis=1) > 1e-6
        self.points = points[keep]
        self.half_lane_widths_m = widths[keep]
        self.target_speeds_mps = speeds[keep]
        if len(self.points) < 2:
            raise ValueError(f"a route needs at least 2 distinct points, got {len(self.points)}")
        deltas = np.diff(self.points, axis=0)
        self._seg_len = np.linalg.norm(deltas, axis=1)
        self._seg_dir = deltas / self._seg_len[:, None]
        self.s = np.concatenate([[0.0], np.cumsum(self._seg_len)])

    @property
    def length_m(self) -> float:
        """Total arc length in metres."""
        return float(self.s[-1])

    def __len__(self) -> int:
        return len(self.points)

    def resampled(self, spacing_m: float) -> Route:
        """Return the same polyline sampled every ``spacing_m`` metres of arc length (end point kept).

        :param spacing_m: distance between samples in metres, > 0.
        :return: a new route; widths and speeds take the value of the segment each sample falls in.
        """
        if not spacing_m > 0:
            raise ValueError(f"spacing_m must be > 0 metres, got {spacing_m!r}")
        s_new = np.append(np.arange(0.0, self.length_m, spacing_m), self.length_m)
        idx = np.clip(np.searchsorted(self.s, s_new, side="right") - 1, 0, len(self.points) - 1)
        return Route(self.points_at(s_new), self.half_lane_widths_m[idx], self.target_speeds_mps[idx])

    def sliced(self, start_m: float, end_m: float) -> Route:
        """Return the part of the route between two arc lengths.

        :param start_m: first arc length kept in metres, in [0, end_m).
        :param end_m: last arc length kept in metres, in (start_m, length].
        :return: a new route starting exactly at ``start_m`` and ending exactly at ``end_m``.
        """
        if not 0.0 <= start_m < end_m <= self.length_m + 1e-9:
            raise ValueError(f"need 0 <= start_m < end_m <= {self.length_m:.3f}, got start_m={start_m!r}, end_m={end_m!r}")
        inside = np.flatnonzero((self.s > start_m) & (self.s < end_m))
        s_new = np.concatenate([[start_m], self.s[inside], [end_m]])
        idx = np.clip(np.searchsorted(self.s, s_new, side="right") - 1, 0, len(self.points) - 1)
        return Route(self.points_at(s_new), self.half_lane_widths_m[idx], self.target_speeds_mps[idx])

    def points_at(self, s_m: np.ndarray) -> np.ndarray:
        """Points at the given arc lengths, clamped to the route (beyond the end: the last point).

        :param s_m: arc lengths in metres, any shape.
        :return: array of shape ``s_m.shape + (2,)``.
        """
        s_m = np.clip(np.asarray(s_m, dtype=np.float64), 0.0, self.length_m)
        return np.stack([np.interp(s_m, self.s, self.points[:, 0]), np.interp(s_m, self.s, self.points[:, 1])], axis=-1)

    def points_ahead(self, s_m: float, spacing_m: float, count: int) -> np.ndarray:
        """The ``count`` route points at ``s_m + spacing_m * k`` for k = 1..count.

        Points past the route end repeat the last point: the list is padded with the end, never with zeros.

        :param s_m: current arc length in metres.
        :param spacing_m: arc length between points in metres, > 0.
        :param count: number of points, >= 1.
        :return: array of shape (count, 2) in world coordinates.
        """
        return self.points_at(s_m + spacing_m * np.arange(1, count + 1))

    def project(
        self, x: float, y: float, s_hint_m: float | None = None, window_m: tuple[float, float] = (10.0, 30.0)
    ) -> RouteProjection:
        """Project a point onto the route.

        :param x: point x in metres.
        :param y: point y in metres.
        :param s_hint_m: previous arc length in metres; when given, only segments within
            ``[s_hint_m - window_m[0], s_hint_m + window_m[1]]`` are searched. None searches the whole route.
        :param window_m: metres searched behind and ahead of the hint, both >= 0.
        :return: the projection.
        """
        first, last = 0, len(self._seg_len) - 1
        if s_hint_m is not None:
            first = max(int(np.searchsorted(self.s, s_hint_m - window_m[0], side="right")) - 1, 0)
            last = min(int(np.searchsorted(self.s, s_hint_m + window_m[1], side="left")), last)
            last = max(last, first)
        starts = self.points[first : last + 1]
        dirs, lens = self._seg_dir[first : last + 1], self._seg_len[first : last + 1]
        rel = np.array([x, y]) - starts
        t = np.clip(np.einsum("ij,ij->i", rel, dirs), 0.0, lens)
        offset = rel - dirs * t[:, None]
        i = int(np.argmin(np.einsum("ij,ij->i", offset, offset)))
        seg = first + i
        # Right of direction (dx, dy) in CARLA's left-handed frame is (-dy, dx).
        lateral = float(-offset[i, 0] * dirs[i, 1] + offset[i, 1] * dirs[i, 0])
        return RouteProjection(
            s_m=float(self.s[seg] + t[i]),
            lateral_m=lateral,
            tangent_yaw_rad=float(math.atan2(dirs[i, 1], dirs[i, 0])),
            half_lane_width_m=float(self.half_lane_widths_m[seg]),
            target_speed_mps=float(self.target_speeds_mps[seg]),
        )


def to_vehicle_frame(points_xy: np.ndarray, x: float, y: float, yaw_rad: float) -> np.ndarray:
    """Express world points in the vehicle frame (x forward, y right, metres).

    :param points_xy: world points, shape (N, 2).
    :param x: vehicle x in metres.
    :param y: vehicle y in metres.
    :param yaw_rad: vehicle yaw in rad (CARLA: from +x towards +y).
    :return: array of shape (N, 2).
    """
    rel = np.asarray(points_xy, dtype=np.float64) - np.array([x, y])
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    return np.stack([rel[:, 0] * c + rel[:, 1] * s, -rel[:, 0] * s + rel[:, 1] * c], axis=-1)


def wrap_angle(angle_rad: float) -> float:
    """Wrap an angle to [-pi, pi).

    :param angle_rad: any angle in rad.
    :return: the equivalent angle in [-pi, pi).
    """
    return float((angle_rad + math.pi) % (2.0 * math.pi) - math.pi)


def load_waypoint_file(path: str | Path) -> np.ndarray:
    """Read a route file of ``x, y, target_speed`` rows (metres, metres, m/s; commas or spaces; ``#`` comments).

    :param path: the file.
    :return: array of shape (N, 3), N >= 2.
    :raises ConfigError: if the file is missing, unreadable, not 3 columns, non-finite or shorter than 2 rows.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"route.waypoint_file {str(path)!r} cannot be read: {e}") from e
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        try:
            values = [float(v) for v in line.split()]
        except ValueError as e:
            raise ConfigError(f"route.waypoint_file {str(path)!r} line {number}: expected numbers, got {line!r}") from e
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ConfigError(
                f"route.waypoint_file {str(path)!r} line {number}: expected 3 finite values 'x, y, target_speed', got {line!r}"
            )
        rows.append(values)
    if len(rows) < 2:
        raise ConfigError(f"route.waypoint_file {str(path)!r} must hold at least 2 waypoints, got {len(rows)}")
    return np.asarray(rows, dtype=np.float64)


@dataclass
class _Edge:
    entry: int
    exit: int
    points: np.ndarray  # (K, 2)
    half_widths: np.ndarray  # (K,)
    road_ids: np.ndarray  # (K,)
    section_ids: np.ndarray  # (K,)
    lane_ids: np.ndarray  # (K,)
    length_m: float


def _along_and_across(vector: np.ndarray, direction: np.ndarray) -> tuple[float, float]:
    """Components of ``vector`` along ``direction`` and (unsigned) across it."""
    unit = direction / max(float(np.linalg.norm(direction)), 1e-12)
    along = float(np.dot(vector, unit))
    return along, abs(float(vector[0] * unit[1] - vector[1] * unit[0]))


def _xy(waypoint: Any) -> tuple[float, float]:
    location = waypoint.transform.location
    return float(location.x), float(location.y)


class RoutePlanner:
    """A* route planning over the lane graph of a ``carla.Map`` (works offline on a map built from OpenDRIVE).

    :param world_map: a ``carla.Map`` (from ``world.get_map()`` or ``carla.Map(name, xodr_text)``).
    :param resolution_m: sampling distance along lanes in metres, > 0.
    """

    def __init__(self, world_map: Any, resolution_m: float = 2.0) -> None:
        if not resolution_m > 0:
            raise ValueError(f"resolution_m must be > 0 metres, got {resolution_m!r}")
        self.resolution_m = float(resolution_m)
        self._nodes: list[tuple[float, float]] = []
        self.edges: list[_Edge] = []
        self._out: dict[int, list[int]] = {}
        seen = set()
        for entry_wp, exit_wp in world_map.get_topology():
            # get_topology repeats a lane once per junction lane its exit feeds; one edge per lane is enough.
            key = (
                entry_wp.road_id,
                entry_wp.section_id,
                entry_wp.lane_id,
                *np.round(_xy(entry_wp), 1),
                *np.round(_xy(exit_wp), 1),
            )
            if key not in seen:
                seen.add(key)
                self._add_edge(entry_wp, exit_wp)
        if not self.edges:
            raise RouteNotFoundError(f"map {getattr(world_map, 'name', '?')!r} has an empty topology; nothing to plan on")
        self._all_points = np.concatenate([e.points for e in self.edges])
        self._all_edge = np.concatenate([np.full(len(e.points), k) for k, e in enumerate(self.edges)])
        self._all_index = np.concatenate([np.arange(len(e.points)) for e in self.edges])
        self._all_road = np.concatenate([e.road_ids for e in self.edges])
        self._all_section = np.concatenate([e.section_ids for e in self.edges])
        self._all_lane = np.concatenate([e.lane_ids for e in self.edges])

    def _node(self, xy: tuple[float, float]) -> int:
        for k, (nx, ny) in enumerate(self._nodes):
            if math.hypot(nx - xy[0], ny - xy[1]) < NODE_MERGE_DISTANCE_M:
                return k
        self._nodes.append(xy)
        return len(self._nodes) - 1

    def _lane_samples(self, entry_wp: Any) -> list[Any]:
        """Waypoints every ``resolution_m`` along the entry's lane section, from the entry to the section's end.

        ``Waypoint.next_until_lane_end`` is not used: it runs to the end of the *road*, not of the lane section
        a topology segment covers (so a road split into lane sections gave edges that overran their exit, and
        raised ``RuntimeError: distance > 0.0`` when a sample fell on a section boundary).
        """
        key = (entry_wp.road_id, entry_wp.section_id, entry_wp.lane_id)
        samples = [entry_wp]
        # A lane section cannot be longer than the road; the bound only guards against a map that loops a
        # lane onto itself within one section.
        for _ in range(1_000_000):
            ahead = [w for w in samples[-1].next(self.resolution_m) if (w.road_id, w.section_id, w.lane_id) == key]
            if not ahead:
                break
            step = ahead[0]
            if math.dist(_xy(step), _xy(samples[-1])) < 1e-6:
                break
            samples.append(step)
        return samples

    def _add_edge(self, entry_wp: Any, exit_wp: Any) -> None:
        waypoints = self._lane_samples(entry_wp)
        points = [_xy(w) for w in waypoints]
        exit_xy = _xy(exit_wp)
        if math.dist(points[-1], exit_xy) > 0.1:
            # Where a lane merges into its neighbour (an added lane ends), the exit lies beside the last sample, not
            # ahead of it: drop samples until the exit is at most MERGE_ANGLE off the lane, so the route changes
            # lane over a few metres instead of stepping sideways.
            direction = np.subtract(points[-1], points[-2]) if len(points) > 1 else None
            while direction is not None and len(points) > 1:
                ahead, lateral = _along_and_across(np.subtract(exit_xy, points[-1]), direction)
                if ahead > 0 and lateral <= ahead * math.tan(MERGE_ANGLE_RAD):
                    break
                points.pop()
                waypoints.pop()
            points.append(exit_xy)
            waypoints.append(exit_wp)
        arr = np.asarray(points)
        length = float(np.linalg.norm(np.diff(arr, axis=0), axis=1).sum()) if len(arr) > 1 else 0.0
        edge = _Edge(
            entry=self._node(points[0]),
            exit=self._node(exit_xy),
            points=arr,
            half_widths=np.array([w.lane_width / 2.0 for w in waypoints]),
            road_ids=np.array([w.road_id for w in waypoints]),
            section_ids=np.array([w.section_id for w in waypoints]),
            lane_ids=np.array([w.lane_id for w in waypoints]),
            length_m=length,
        )
        self.edges.append(edge)
        self._out.setdefault(edge.entry, []).append(len(self.edges) - 1)

    def _localize(self, waypoint: Any) -> tuple[int, int]:
        """Return (edge index, point index) of the lane-graph point closest to ``waypoint`` on its lane section."""
        xy = np.array(_xy(waypoint))
        mask = (
            (self._all_road == waypoint.road_id)
            & (self._all_section == waypoint.section_id)
            & (self._all_lane == waypoint.lane_id)
        )
        if not mask.any():
            mask = (self._all_road == waypoint.road_id) & (self._all_lane == waypoint.lane_id)
        if not mask.any():
            mask = np.ones(len(self._all_points), dtype=bool)
        candidates = np.flatnonzero(mask)
        best = candidates[np.argmin(np.linalg.norm(self._all_points[candidates] - xy, axis=1))]
        return int(self._all_edge[best]), int(self._all_index[best])

    def _astar(self, start_node: int, goal_node: int) -> list[int]:
        """Edge indices of the shortest path from ``start_node`` to ``goal_node`` (empty if they are equal)."""
        goal = self._nodes[goal_node]
        frontier = [(0.0, 0.0, start_node)]
        best = {start_node: 0.0}
        came_from: dict[int, tuple[int, int]] = {}
        while frontier:
            _, cost, node = heapq.heappop(frontier)
            if node == goal_node:
                path: list[int] = []
                while node != start_node:
                    node, edge_index = came_from[node]
                    path.append(edge_index)
                return path[::-1]
            if cost > best.get(node, math.inf):
                continue
            for k in self._out.get(node, []):
                edge = self.edges[k]
                new_cost = cost + edge.length_m
                if new_cost < best.get(edge.exit, math.inf):
                    best[edge.exit] = new_cost
                    came_from[edge.exit] = (node, k)
                    heuristic = math.dist(self._nodes[edge.exit], goal)
                    heapq.heappush(frontier, (new_cost + heuristic, new_cost, edge.exit))
        raise RouteNotFoundError(
            f"no lane-following path from node {self._nodes[start_node]} to node {self._nodes[goal_node]}"
        )

    def plan(self, start_waypoint: Any, end_waypoint: Any) -> Route:
        """Shortest lane-following route from one waypoint to another.

        :param start_waypoint: a ``carla.Waypoint`` where the route starts (e.g. ``map.get_waypoint(location)``).
        :param end_waypoint: a ``carla.Waypoint`` where it ends.
        :return: the route, sampled every ``resolution_m`` metres, from exactly the start waypoint's location to
            exactly the end's. If the end lies behind the start on the same lane (or is the start), the route
            drives round to it.
        :raises RouteNotFoundError: if the end cannot be reached from the start by following lanes.
        """
        start_edge, start_index = self._localize(start_waypoint)
        end_edge, end_index = self._localize(end_waypoint)
        first = self.edges[start_edge]
        # One extra sample on each side, so the exact cut below can fall between two samples.
        begin, stop = max(start_index - 1, 0), end_index + 2
        parts: list[tuple[_Edge, int, int | None]]
        if start_edge == end_edge and end_index > start_index:
            parts = [(first, begin, stop)]
        else:
            middle = self._astar(first.exit, self.edges[end_edge].entry)
            parts = [(first, begin, None)]
            parts += [(self.edges[k], 0, None) for k in middle]
            parts.append((self.edges[end_edge], 0, stop))
        points = np.concatenate([edge.points[a:b] for edge, a, b in parts])
        widths = np.concatenate([edge.half_widths[a:b] for edge, a, b in parts])
        if len(points) < 2:
            raise RouteNotFoundError(f"start {_xy(start_waypoint)} and end {_xy(end_waypoint)} give an empty route")
        route = Route(points, widths)
        # The lane samples nearest to the waypoints may lie up to half a resolution step off; cut the route
        # exactly at the projections of the two waypoints.
        s_start = route.project(*_xy(start_waypoint), s_hint_m=0.0, window_m=(0.0, 2.0 * self.resolution_m)).s_m
        s_end = route.project(*_xy(end_waypoint), s_hint_m=route.length_m, window_m=(2.0 * self.resolution_m, 0.0)).s_m
        if s_end - s_start < 1e-6:
            raise RouteNotFoundError(f"start {_xy(start_waypoint)} and end {_xy(end_waypoint)} give an empty route")
        route = route.sliced(s_start, s_end)
        route.points[0], route.points[-1] = _xy(start_waypoint), _xy(end_waypoint)  # on curves the chord is cm off
        return Route(route.points, route.half_lane_widths_m).resampled(self.resolution_m)

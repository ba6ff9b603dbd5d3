"""Per-episode decisions of the CARLA env, as functions: route choice, spawn poses, sensor specs, NPC choice,
the observation vector, action checking and the episode-end reason.

``carla`` is passed in (never imported), and randomness only comes from the ``rng`` argument (the env's
``np_random``), so a seeded reset repeats exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from sb3_carla_td3.envs.carla.actors import SPAWN_LIFT_M, CarlaSpawnError, yaw_degrees
from sb3_carla_td3.envs.carla.config import CameraConfig, CarlaConfig, RouteConfig
from sb3_carla_td3.envs.carla.routes import (
    Route,
    RouteNotFoundError,
    RoutePlanner,
    RouteProjection,
    to_vehicle_frame,
    wrap_angle,
)

#: Speed that maps to 1.0 in the observation vector, m/s.
SPEED_SCALE_MPS = 30.0
#: Bound of every entry of the observation vector (values are clipped to it).
VECTOR_BOUND = 10.0


def fixed_route(
    carla: Any, world_map: Any, planner: RoutePlanner, config: RouteConfig, rows: np.ndarray | None
) -> tuple[Route, float] | None:
    """The configured route and the road height at its start, or None when routes are random.

    :param carla: the ``carla`` module.
    :param world_map: the server's ``carla.Map``.
    :param planner: planner on that map.
    :param config: the route section (start/end pair).
    :param rows: waypoint-file rows ``(x, y, target_speed)``, or None; they take precedence over start/end.
    :return: ``(route, start z in metres)`` or None.
    """
    if rows is not None:
        waypoints = [world_map.get_waypoint(carla.Location(x=float(x), y=float(y), z=0.0)) for x, y, _ in rows]
        half_widths = np.array([w.lane_width / 2.0 for w in waypoints])
        route = Route(rows[:, :2], half_widths, rows[:, 2]).resampled(config.resolution_m)
        return route, waypoints[0].transform.location.z
    if config.start_xy is not None and config.end_xy is not None:
        start = world_map.get_waypoint(carla.Location(x=config.start_xy[0], y=config.start_xy[1], z=0.0))
        end = world_map.get_waypoint(carla.Location(x=config.end_xy[0], y=config.end_xy[1], z=0.0))
        return planner.plan(start, end), start.transform.location.z
    return None


def random_route(
    world_map: Any, planner: RoutePlanner, spawn_points: list[Any], config: RouteConfig, rng: np.random.Generator
) -> tuple[Route, float]:
    """A route of at least ``config.min_length_m`` between two random spawn points, in bounded attempts.

    :param world_map: the server's ``carla.Map``.
    :param planner: planner on that map.
    :param spawn_points: candidate start/end transforms (lifted by ``SPAWN_LIFT_M``).
    :param config: the route section (``min_length_m``, ``max_attempts``).
    :param rng: the env's random generator.
    :return: ``(route, start z in metres)``.
    :raises CarlaSpawnError: if fewer than 2 spawn points exist or no pair gives a long enough route.
    """
    if len(spawn_points) < 2:
        raise CarlaSpawnError(f"the map offers {len(spawn_points)} spawn points; random routes need 2")
    for _ in range(config.max_attempts):
        i, j = rng.choice(len(spawn_points), size=2, replace=False)
        a, b = spawn_points[i].location, spawn_points[j].location
        try:
            route = planner.plan(world_map.get_waypoint(a), world_map.get_waypoint(b))
        except RouteNotFoundError:
            continue
        if route.length_m >= config.min_length_m:
            return route, a.z - SPAWN_LIFT_M
    raise CarlaSpawnError(
        f"no route of at least {config.min_length_m} m found in {config.max_attempts} random start/end pairs; "
        "lower route.min_length_m or set route.start_xy and route.end_xy"
    )


def ego_transform(carla: Any, route: Route, z: float) -> Any:
    """Spawn pose at the route start, pointing along its first segment, lifted above the road.

    :param carla: the ``carla`` module.
    :param route: the episode's route.
    :param z: road height at the start in metres.
    :return: a ``carla.Transform``.
    """
    (x0, y0), (x1, y1) = route.points[0], route.points[1]
    return carla.Transform(
        carla.Location(x=float(x0), y=float(y0), z=float(z) + SPAWN_LIFT_M), carla.Rotation(yaw=yaw_degrees(x1 - x0, y1 - y0))
    )


def sensor_specs(
    carla: Any, camera: CameraConfig, callbacks: tuple[Callable[[Any], None], Callable[[Any], None], Callable[[Any], None]]
) -> list[tuple[str, dict[str, str], Any, Callable[[Any], None]]]:
    """Blueprint ids, attributes, mounts and callbacks of the camera, collision and lane-invasion sensors.

    :param carla: the ``carla`` module.
    :param camera: camera size, field of view and mount.
    :param callbacks: ``listen`` callbacks of the camera, collision and lane-invasion sensors, in that order.
    :return: one spec per sensor, for :meth:`ActorLifecycle.spawn_sensors`.
    """
    attributes = {
        "image_size_x": str(camera.width),
        "image_size_y": str(camera.height),
        "fov": str(camera.fov_deg),
        "sensor_tick": "0.0",  # one image per world tick
    }
    mount = carla.Transform(carla.Location(x=camera.mount_x_m, z=camera.mount_z_m), carla.Rotation(pitch=camera.pitch_deg))
    on_image, on_collision, on_lane_invasion = callbacks
    return [
        ("sensor.camera.rgb", attributes, mount, on_image),
        ("sensor.other.collision", {}, carla.Transform(), on_collision),
        ("sensor.other.lane_invasion", {}, carla.Transform(), on_lane_invasion),
    ]


def choose_npcs(
    spawn_points: list[Any], blueprints: list[Any], config: CarlaConfig, ego_xy: np.ndarray, rng: np.random.Generator
) -> tuple[list[Any], list[Any]]:
    """Random NPC blueprints and spawn points farther than ``config.npc_exclusion_radius_m`` from the ego.

    :param spawn_points: candidate transforms.
    :param blueprints: candidate vehicle blueprints.
    :param config: ``n_npc_vehicles`` (fewer if there are fewer free spawn points) and ``npc_exclusion_radius_m``.
    :param ego_xy: ego start (x, y) in metres.
    :param rng: the env's random generator.
    :return: ``(blueprints, transforms)`` of equal length.
    """
    if config.n_npc_vehicles == 0 or not blueprints:
        return [], []
    radius = config.npc_exclusion_radius_m
    free = [t for t in spawn_points if math.dist((t.location.x, t.location.y), ego_xy) > radius]
    chosen = [free[k] for k in rng.permutation(len(free))[: config.n_npc_vehicles]]
    return [blueprints[k] for k in rng.integers(len(blueprints), size=len(chosen))], chosen


def observation_vector(
    route: Route, projection: RouteProjection, pose: tuple[float, float, float, float], config: RouteConfig
) -> np.ndarray:
    """``[speed / 30, lateral / half lane width, heading error / pi, next waypoints (x, y) / lookahead]``.

    :param route: the episode's route.
    :param projection: the ego's projection onto it.
    :param pose: ego ``(x m, y m, yaw rad, speed m/s)``.
    :param config: ``n_waypoints`` and ``lookahead_m``.
    :return: float32 array of shape ``(3 + 2 * n_waypoints,)``, clipped to ``[-VECTOR_BOUND, VECTOR_BOUND]``.
    """
    x, y, yaw, speed = pose
    ahead = route.points_ahead(projection.s_m, config.lookahead_m / config.n_waypoints, config.n_waypoints)
    local = to_vehicle_frame(ahead, x, y, yaw) / config.lookahead_m
    heading_error = wrap_angle(yaw - projection.tangent_yaw_rad)
    head = [speed / SPEED_SCALE_MPS, projection.lateral_m / projection.half_lane_width_m, heading_error / math.pi]
    return np.clip(np.concatenate([head, local.ravel()]).astype(np.float32), -VECTOR_BOUND, VECTOR_BOUND)


def check_action(action: Any, action_space: spaces.Box) -> np.ndarray:
    """Validate and clip an action.

    :param action: ``[steer, throttle_brake]``.
    :param action_space: the env's action space (for the message).
    :return: float64 array of shape (2,) clipped to [-1, 1].
    :raises ValueError: naming the action and the space if it is not numeric, not of shape (2,) or not finite.
    """
    try:
        array = np.asarray(action, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"action must be numeric for action space {action_space}, got {action!r}") from e
    if array.shape != (2,):
        raise ValueError(
            f"action must have shape (2,) = [steer, throttle_brake] for action space {action_space}, "
            f"got {action!r} with shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"action must be finite for action space {action_space}, got {action!r}")
    return np.clip(array, -1.0, 1.0)


def stuck_steps_limit(config: CarlaConfig) -> int:
    """Consecutive slow steps that make the episode end "stuck".

    :param config: ``stuck_seconds`` of simulated time and ``fixed_delta_seconds`` per step.
    :return: ``ceil(stuck_seconds / fixed_delta_seconds)``, >= 1 (a float error of 1e-9 steps is forgiven).
    """
    return math.ceil(config.stuck_seconds / config.fixed_delta_seconds - 1e-9)


def end_reason(
    config: CarlaConfig, collision: bool, off_road: bool, remaining_m: float, steps: int, stuck_steps: int
) -> tuple[str | None, bool]:
    """Why the episode ends after this step, and whether that is a termination (else a truncation).

    :param config: thresholds (``route_end_tolerance_m``, ``max_episode_steps``, ``stuck_seconds``).
    :param collision: a collision event this step.
    :param off_road: the lateral deviation exceeded ``max_lateral_deviation_m``.
    :param remaining_m: route arc length left in metres.
    :param steps: steps taken this episode.
    :param stuck_steps: consecutive steps below ``stuck_speed_mps``.
    :return: ``(reason, terminated)``; reason is None while the episode runs. Terminations win over truncations.
        "stuck" is a termination when ``reward.stuck_penalty`` is non-zero (the agent chose to stop), else a truncation.
    """
    terminal = (
        ("collision", collision),
        ("off_route", off_road),
        ("route_completed", remaining_m <= config.route_end_tolerance_m),
    )
    for reason, hit in terminal:
        if hit:
            return reason, True
    if steps >= config.max_episode_steps:
        return "max_steps", False
    if stuck_steps >= stuck_steps_limit(config):
        return "stuck", config.reward.stuck_penalty != 0.0
    return None, False

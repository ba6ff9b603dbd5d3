"""Gymnasium environment for CARLA 0.9.16: camera frames plus a route vector, driven with [steer, throttle_brake]."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sb3_carla_td3.envs.carla.actors import (
    ActorLifecycle,
    CarlaSpawnError,
    four_wheeled_blueprints,
    spawn_transforms,
    sweep_stale_actors,
)
from sb3_carla_td3.envs.carla.config import CarlaConfig
from sb3_carla_td3.envs.carla.connection import CarlaBackend
from sb3_carla_td3.envs.carla.episode import (
    VECTOR_BOUND,
    check_action,
    choose_npcs,
    ego_transform,
    end_reason,
    fixed_route,
    observation_vector,
    random_route,
    sensor_specs,
    stuck_steps_limit,
)
from sb3_carla_td3.envs.carla.rewards import REWARD_TERMS, RewardInputs, compute_reward_terms
from sb3_carla_td3.envs.carla.routes import Route, RoutePlanner, load_waypoint_file, wrap_angle
from sb3_carla_td3.envs.carla.sensors import (
    FrameStack,
    SensorFrameError,
    SensorReadings,
    SensorSuite,
    SensorTimeoutError,
    preprocess_image,
    repeat_newest_frame,
)
from sb3_carla_td3.envs.carla.server import CarlaServerSupervisor
from sb3_carla_td3.envs.carla.sharing import REGISTRY, new_owner_tag, server_key
from sb3_carla_td3.envs.wrappers import StreakCounter, pedal_control
from sb3_carla_td3.errors import CarlaConnectionError

logger = logging.getLogger(__name__)

#: Route metres searched behind and ahead of the previous projection each step.
PROJECTION_WINDOW_M = (10.0, 30.0)
#: Exceptions that mean "the server or its streams failed" (libcarla raises RuntimeError on RPC time-outs).
CARLA_FAILURES = (RuntimeError, TimeoutError)
#: Waits between reset attempts (a module attribute, so tests can record the backoff without sleeping).
_sleep = time.sleep


def reconnect_delay_s(config: CarlaConfig, attempt: int) -> float:
    """Seconds to wait after failed reset attempt ``attempt`` (1-based) before the next one.

    :param config: ``reconnect_delay_s`` (first wait) and ``reconnect_max_delay_s`` (cap); the wait doubles.
    :param attempt: the attempt that just failed, >= 1.
    :return: ``min(reconnect_delay_s * 2 ** (attempt - 1), reconnect_max_delay_s)``.
    """
    return float(min(config.reconnect_delay_s * 2.0 ** (attempt - 1), config.reconnect_max_delay_s))


class CarlaEnv(gym.Env[dict[str, Any], np.ndarray]):
    """
    ## Description
    Drive an ego vehicle along a route in the CARLA simulator (0.9.16) from a front camera. The server runs in
    synchronous mode: each :meth:`step` applies one control and advances the world by ``fixed_delta_seconds``
    (0.05 s by default, 20 Hz). Sensor data is matched to the frame id returned by ``world.tick()``, so an
    observation is never stale or repeated. NPC traffic is driven by the Traffic Manager.

    ## Action Space
    ``Box(-1, 1, (2,), float32)``:

    | Index | Action         | Range   | Effect                                                        |
    |-------|----------------|---------|---------------------------------------------------------------|
    | 0     | steer          | [-1, 1] | ``VehicleControl.steer`` (-1 full left, 1 full right)         |
    | 1     | throttle_brake | [-1, 1] | positive part is throttle, negative part times ``max_brake`` is brake (no reverse) |

    An action of the wrong shape or with NaN/inf raises ``ValueError``; finite values are clipped to [-1, 1]
    (``carla.VehicleControl`` does not clamp).

    ## Observation Space
    ``Dict`` with two keys:

    - ``"image"``: ``uint8`` ``(frames * C, image_size, image_size)``, C = 1 (grey) or 3 (RGB), the last
      ``frames`` camera images, oldest first and newest last. After a reset every slot but the newest is zero
      (SB3 ``VecFrameStack`` convention).
    - ``"vector"``: ``float32`` ``(3 + 2 * n_waypoints,)``, each entry clipped to [-10, 10]:
      speed / 30 m/s; signed lateral deviation from the route / half lane width (positive: right of the route);
      heading error / pi; then the next ``n_waypoints`` route points (x forward, y right, in the vehicle frame)
      spaced ``lookahead_m / n_waypoints`` apart along the route, divided by ``lookahead_m``. Points past the
      route end repeat the end point, never zeros.

    ## Rewards
    The sum of the weighted terms of :func:`~sb3_carla_td3.envs.carla.rewards.compute_reward_terms`, each reported in
    ``info["reward_terms"]``: efficiency (speed along the route vs target, [-1, 1]), lane keeping ([-1, 0]),
    comfort (action change, [-1, 0]), safety (lane invasion, wrong way, [-2, 0]), progress (metres of route arc
    length gained), collision (``collision_penalty``) and off-road (``off_road_penalty``); every weight is >= 0 and
    every penalty <= 0, added as it is. Example with the
    defaults: driving on the centre line at the 8 m/s target for one 0.05 s step gains 0.4 m, so the reward is
    1.0 (efficiency) + 0.5 * 0.4 (progress) = 1.2.

    ## Starting State
    The ego spawns at the route start, pointing along the route, and the world ticks ``settle_ticks`` times with
    the brake on before the first observation (up to ``settle_max_dropped_frames`` camera frames lost while settling
    are tolerated). Routes are fixed (``route.start_xy``/``end_xy`` or
    ``route.waypoint_file``) or drawn per reset from the map's spawn points with ``self.np_random``. NPCs spawn at
    random spawn points more than ``npc_exclusion_radius_m`` from the ego.

    ## Episode End
    ``info["reason"]`` says why (None while running). Terminated: ``"collision"`` (collision sensor event),
    ``"off_route"`` (|lateral deviation| > ``max_lateral_deviation_m``), ``"route_completed"`` (less than
    ``route_end_tolerance_m`` of route left). Truncated: ``"max_steps"`` (``max_episode_steps`` steps),
    ``"stuck"`` (speed < ``stuck_speed_mps`` for ``stuck_seconds`` of simulated time; a termination instead, with
    ``reward.stuck_penalty`` (<= 0) added, when that penalty is non-zero), ``"carla_error"``
    (tick or sensor time-out while the server still answers; ``info["carla_error"]`` holds the message, the actors
    are destroyed and the next :meth:`reset` reconnects), ``"server_lost"`` (the server died or hangs: the same,
    but :meth:`reset` reconnects with backoff, ``reconnect_attempts`` tries ``reconnect_delay_s`` apart, doubling
    up to ``reconnect_max_delay_s``, and raises ``CarlaConnectionError`` only after the last) and ``"interrupted"``
    (another env of this process started an episode on the same server and destroyed this one's actors, reward 0;
    :mod:`~sb3_carla_td3.envs.carla.sharing`). ``info`` only holds
    plain Python values, so it pickles through ``SubprocVecEnv``. For the leaderboard metrics
    (:mod:`sb3_carla_td3.validation.leaderboard`) a step's info also holds ``collision_types`` (the other actor's
    ``type_id`` per collision event, ``""`` when the event names no actor), ``lane_invasions`` (events this step) and
    ``off_driving_lane`` (the ego is outside every driving lane of the map).

    ## Arguments
    ``CarlaEnv(config=None, render_mode=None, *, backend=None)``; see the parameters below. Construction probes
    the server in a subprocess first (libcarla aborts the process if a non-CARLA service answers) and raises
    :class:`~sb3_carla_td3.errors.CarlaConnectionError` within ``timeout_s + 1`` s if none answers.
    :meth:`close` destroys every actor and restores the world settings found on connect (through a fresh client if
    the env's own is gone; a synchronous mode left over by a crashed client becomes asynchronous mode); it is
    idempotent. A failure during construction after the settings were changed restores them before raising.

    ## Version History
    - v0: first release (CARLA 0.9.16, synchronous mode, frame-matched sensors, A* routes on the map topology).
      Penalties (``reward.*_penalty``) are <= 0 and added, as CarRacing's; a positive one raises ``ConfigError``.
      Envs of one process share a server (phase 3's evaluation env): owner-tagged actors, shared settings.

    :param config: everything the env reads; None uses ``CarlaConfig()`` (localhost:2000, Town01).
    :param render_mode: None, or ``"rgb_array"`` for :meth:`render` to return the latest camera image.
    :param backend: where ``carla`` comes from and how to connect; None uses the installed ``carla`` package
        (raises ``ImportError`` with the install command if it is missing). Tests pass a fake server.
    """

    # Not a ClassVar: gymnasium declares metadata as an instance variable, and __init__ sets render_fps per config.
    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 20}  # noqa: RUF012

    def __init__(
        self, config: CarlaConfig | None = None, render_mode: str | None = None, *, backend: CarlaBackend | None = None
    ) -> None:
        if config is not None and not isinstance(config, CarlaConfig):
            raise ValueError(f"config must be a CarlaConfig or None, got {type(config).__name__}: {config!r}")
        self.config = config if config is not None else CarlaConfig()
        self.config.validate()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        cfg = self.config
        self.metadata = {**type(self).metadata, "render_fps": max(1, round(1.0 / cfg.fixed_delta_seconds))}
        self._route_rows = load_waypoint_file(cfg.route.waypoint_file) if cfg.route.waypoint_file else None
        self._backend = backend if backend is not None else CarlaBackend.default()
        self._carla = self._backend.carla

        self.frame_stack: int = cfg.frames
        channels = 1 if cfg.grayscale else 3
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (cfg.frames * channels, cfg.image_size, cfg.image_size), np.uint8),
                "vector": spaces.Box(-VECTOR_BOUND, VECTOR_BOUND, (3 + 2 * cfg.route.n_waypoints,), np.float32),
            }
        )
        self._action_box = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = self._action_box
        self._frames = FrameStack(cfg.frames, channels, cfg.image_size)
        self._sensors = SensorSuite()

        # Connection state (None while disconnected).
        self._client: Any = None
        self._world: Any = None
        self._map: Any = None
        self._planner: RoutePlanner | None = None
        self._actors: ActorLifecycle | None = None
        self._spawn_points: list[Any] = []
        self._npc_blueprints: list[Any] = []
        self._fixed_route: tuple[Route, float] | None = None
        self._original_settings: Any = None
        #: True while the server may hold settings this env applied (synchronous mode) that close() must undo.
        self._settings_changed = False
        #: This connection's owner tag in the process's server registry (None while disconnected); see ``sharing``.
        self._owner: str | None = None
        self._server_key = server_key(cfg.host, cfg.port)
        #: Another env of this process started an episode on the server and ended ours: the next step truncates.
        self._interrupted = False
        # Episode state.
        self._ego: Any = None
        self._location: Any = None
        self._route: Route | None = None
        self._s_m = 0.0
        self._steps = 0
        #: Consecutive steps below ``stuck_speed_mps`` (the rule of the StuckTermination wrapper).
        self._stuck = StreakCounter(stuck_steps_limit(cfg))
        self._prev_action = np.zeros(2)
        self._last_obs: dict[str, np.ndarray] | None = None
        self._last_rgb: np.ndarray | None = None
        self._episode_over = True
        self._seeded = False
        #: Frame id of the camera image in the newest observation slot (None before the first reset).
        self.last_image_frame: int | None = None
        #: The server this env started (``config.server_command``), or None.
        self.server: CarlaServerSupervisor | None = None
        if cfg.server_command is not None:
            self.server = CarlaServerSupervisor(
                cfg.server_command,
                cfg.port,
                Path(cfg.server_log_dir) / f"carla_server_{cfg.port}.log",
                host=cfg.host,
                start_timeout_s=cfg.server_start_timeout_s,
            )
        try:
            if self.server is not None:
                self.server.start()
            self._connect()
        except BaseException:
            if self.server is not None:
                self.server.stop()
            raise

    # ------------------------------------------------------------------ connection
    def _connect(self) -> None:
        """Connect, switch the world to synchronous mode, set up the Traffic Manager and the route planner.

        If anything fails once the settings were changed, they are restored before the error propagates (a world
        left in synchronous mode with nobody ticking freezes every later client).
        """
        cfg, carla = self.config, self._carla
        client = self._backend.connect(cfg.host, cfg.port, cfg.timeout_s)
        world: Any = None
        owner = new_owner_tag()
        try:
            world = client.get_world()
            if world.get_map().name.rsplit("/", 1)[-1] != cfg.town:
                world = client.load_world(cfg.town)
            # Another env of this process on this server (phase 3's evaluation env) shares one record of the settings
            # to restore: the synchronous mode this env finds then is that env's, not a crashed client's leftover.
            self._original_settings = REGISTRY.join(
                self._server_key,
                owner,
                lambda: self._original_settings or self._settings_to_restore(world.get_settings()),
                cfg.tm_port,
                cfg.fixed_delta_seconds,
                self._interrupt_episode,
            )
            self._owner = owner
            settings = world.get_settings()
            settings.synchronous_mode = True
            settings.fixed_delta_seconds = cfg.fixed_delta_seconds
            settings.no_rendering_mode = False  # cameras need rendering (and 0.9.16 slows down otherwise)
            self._settings_changed = True  # before the call: a time-out may still have applied them
            world.apply_settings(settings)
            traffic_manager = client.get_trafficmanager(cfg.tm_port)
            traffic_manager.set_synchronous_mode(True)
            if cfg.seed is not None:
                traffic_manager.set_random_device_seed(cfg.seed)
            sweep_stale_actors(carla, client, world)
            world_map = world.get_map()
            planner = RoutePlanner(world_map, cfg.route.resolution_m)
            self._spawn_points = spawn_transforms(carla, world_map)
            self._npc_blueprints = four_wheeled_blueprints(world.get_blueprint_library())
            self._fixed_route = fixed_route(carla, world_map, planner, cfg.route, self._route_rows)
        except BaseException as e:
            self._restore_settings(client, world)
            self._leave_registry(owner)
            if isinstance(e, CARLA_FAILURES):
                raise CarlaConnectionError(f"CARLA server at {cfg.host}:{cfg.port} failed while setting up: {e}") from e
            raise
        self._client, self._world, self._map, self._planner = client, world, world_map, planner
        self._actors = ActorLifecycle(carla, client, world, cfg.tm_port, owner=owner)

    def _leave_registry(self, owner: str | None = None) -> None:
        """Forget this env's connection in the process's server registry (its actors become sweepable)."""
        owner = owner or self._owner
        if owner is not None:
            REGISTRY.leave(self._server_key, owner)
        self._owner = None

    def _interrupt_episode(self) -> None:
        """Destroy this env's actors because another env of this process starts an episode on the same server.

        Called by :meth:`ServerRegistry.claim <sb3_carla_td3.envs.carla.sharing.ServerRegistry.claim>`. A running
        episode ends: the next :meth:`step` returns a truncation with reason ``"interrupted"``. Never raises.
        """
        if not self._episode_over:
            self._interrupted = True
        self._ego, self._episode_over = None, True
        if self._actors is None:
            return
        try:
            self._actors.destroy_all()
        except CARLA_FAILURES as e:
            logger.warning("could not destroy the actors of an interrupted episode (they are swept on reconnect): %s", e)

    def _settings_to_restore(self, found: Any) -> Any:
        """The settings to put back on close: those found on the first connect, except a leftover synchronous mode.

        A server found in synchronous mode was left so by a client that did not restore it (crashed or killed):
        restoring that would freeze the next client, so asynchronous mode with a variable time step (CARLA's
        defaults) is restored instead.

        :param found: ``world.get_settings()`` on the first connect (modified in place).
        :return: the settings :meth:`close` applies.
        """
        if found.synchronous_mode:
            logger.warning(
                "CARLA server at %s:%s was found in synchronous mode (fixed_delta_seconds=%s), left by a client that did "
                "not restore it; close() will restore asynchronous mode with a variable time step instead",
                self.config.host,
                self.config.port,
                found.fixed_delta_seconds,
            )
            found.synchronous_mode = False
            found.fixed_delta_seconds = None
        return found

    def _restore_settings(self, client: Any = None, world: Any = None, fresh_client: bool = True) -> bool:
        """Put back the original world settings and switch the Traffic Manager out of synchronous mode.

        Tries ``client``/``world`` (the env's own when None) first, then, with ``fresh_client``, a new connection
        (the old client may be gone after a time-out). Never raises: failures are logged.

        :param client: the client to try first; None uses the env's current client (if any).
        :param world: that client's world; None asks the client for it.
        :param fresh_client: whether to connect anew when the first attempt fails or there is no client.
        :return: True if the settings are restored (or were never changed).
        """
        if not self._settings_changed or self._original_settings is None:
            return True
        cfg = self.config
        others = REGISTRY.others(self._server_key, self._owner)
        if others:  # another env of this process still ticks the server; the last one to leave restores
            self._settings_changed = False
            if cfg.tm_port not in others:
                try:
                    (client or self._client or self._backend.connect(cfg.host, cfg.port, cfg.timeout_s)).get_trafficmanager(
                        cfg.tm_port
                    ).set_synchronous_mode(False)
                except (*CARLA_FAILURES, CarlaConnectionError) as e:
                    logger.warning("could not switch Traffic Manager %s out of synchronous mode: %s", cfg.tm_port, e)
            return True
        if client is None:
            client, world = self._client, self._world
        attempts = ([(client, world)] if client is not None else []) + ([(None, None)] if fresh_client else [])
        for attempt_client, attempt_world in attempts:
            try:
                if attempt_client is None:
                    attempt_client = self._backend.connect(cfg.host, cfg.port, cfg.timeout_s)
                    logger.info("restoring CARLA world settings through a fresh client at %s:%s", cfg.host, cfg.port)
                if attempt_world is None:
                    attempt_world = attempt_client.get_world()
                attempt_world.apply_settings(self._original_settings)
            except (*CARLA_FAILURES, CarlaConnectionError) as e:
                logger.warning("could not restore the CARLA world settings at %s:%s: %s", cfg.host, cfg.port, e)
                continue
            self._settings_changed = False
            try:
                attempt_client.get_trafficmanager(cfg.tm_port).set_synchronous_mode(False)
            except CARLA_FAILURES as e:
                logger.warning("could not switch Traffic Manager %s out of synchronous mode: %s", cfg.tm_port, e)
            return True
        return False

    def _disconnect(self) -> bool:
        """Destroy the episode's actors and restore the world settings if the server still answers, then forget the
        connection (settings that could not be restored are retried by :meth:`close` with a fresh client).

        :return: whether the server answered (False: it died or hangs).
        """
        answering = True
        if self._actors is not None:
            try:
                self._actors.destroy_all()
            except CARLA_FAILURES as e:
                answering = False
                logger.warning("could not destroy actors while disconnecting (they are swept on reconnect): %s", e)
        if answering and self._client is not None:
            self._restore_settings(fresh_client=False)
        self._leave_registry()
        self._client = self._world = self._map = self._planner = self._actors = None
        self._ego = None
        self._episode_over = True
        return answering

    # ------------------------------------------------------------------ episode set-up
    def _connected(self) -> tuple[ActorLifecycle, RoutePlanner]:
        """The actor lifecycle and route planner of the current connection.

        :raises CarlaConnectionError: if the env is not connected (after a failure that :meth:`reset` repairs).
        """
        if self._actors is None or self._planner is None:
            raise CarlaConnectionError(f"not connected to the CARLA server at {self.config.host}:{self.config.port}")
        return self._actors, self._planner

    def _spawn_ego(self) -> tuple[Route, Any, int]:
        """Choose the route and spawn the ego at its start; random routes retry on an occupied spot."""
        actors, planner = self._connected()
        attempts = 1 if self._fixed_route is not None else self.config.route.max_attempts
        for attempt in range(1, attempts + 1):
            if self._fixed_route is not None:
                route, z = self._fixed_route
            else:
                route, z = random_route(self._map, planner, self._spawn_points, self.config.route, self.np_random)
            try:
                ego = actors.spawn_ego(self.config.ego_blueprint, ego_transform(self._carla, route, z))
            except CarlaSpawnError:
                if attempt == attempts:
                    raise
                continue
            return route, ego, attempt
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_episode(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        cfg = self.config
        if self._owner is not None:  # one episode at a time on a shared server (sb3_carla_td3.envs.carla.sharing)
            REGISTRY.claim(self._server_key, self._owner)
        self._sensors.clear()
        route, ego, attempts = self._spawn_ego()
        callbacks = (self._sensors.on_image, self._sensors.on_collision, self._sensors.on_lane_invasion)
        actors, _ = self._connected()
        actors.spawn_sensors(ego.id, sensor_specs(self._carla, cfg.camera, callbacks))
        npcs = choose_npcs(self._spawn_points, self._npc_blueprints, cfg, route.points[0], self.np_random)
        npc_spawned = actors.spawn_npcs(*npcs)
        ego.apply_control(self._carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0))
        readings = self._settle()
        self._ego, self._route = ego, route
        x, y, yaw, speed = self._measure()
        projection = route.project(x, y, s_hint_m=0.0, window_m=PROJECTION_WINDOW_M)
        self._s_m, self._steps = projection.s_m, 0
        self._stuck.reset()
        self._prev_action = np.zeros(2)
        image = self._frames.reset(self._preprocess(readings))
        obs = {"image": image, "vector": observation_vector(route, projection, (x, y, yaw, speed), cfg.route)}
        self._last_obs = obs
        self._episode_over = False
        info = {"reason": None, "route_length_m": route.length_m, "route_attempts": attempts, "npc_spawned": npc_spawned}
        return {k: v.copy() for k, v in obs.items()}, info

    def _settle(self) -> SensorReadings:
        """Tick ``settle_ticks`` times with the brake on (the car drops onto the road; events are discarded).

        A camera frame that is missing or skipped on a settle tick is tolerated up to ``settle_max_dropped_frames``
        times per reset; the first observation always comes from a tick whose frame arrived (one more tick is
        taken if the last one's frame was lost).

        :return: the readings of the last tick.
        :raises SensorTimeoutError: (or :class:`SensorFrameError`) on one dropped frame more than allowed.
        """
        cfg = self.config
        readings: SensorReadings | None = None
        ticks = dropped = 0
        while ticks < cfg.settle_ticks or readings is None:
            frame = self._world.tick(cfg.timeout_s)
            ticks += 1
            try:
                readings = self._sensors.collect(frame, cfg.timeout_s)
            except (SensorTimeoutError, SensorFrameError) as e:
                dropped += 1
                if dropped > cfg.settle_max_dropped_frames:
                    raise
                readings = None
                logger.warning(
                    "camera frame lost while settling (%d of %d allowed per reset): %s",
                    dropped,
                    cfg.settle_max_dropped_frames,
                    e,
                )
        return readings

    # ------------------------------------------------------------------ per-step helpers
    def _measure(self) -> tuple[float, float, float, float]:
        """Ego x (m), y (m), yaw (rad) and speed (m/s) after the last tick (the location is kept for
        :meth:`_off_driving_lane`)."""
        transform, velocity = self._ego.get_transform(), self._ego.get_velocity()
        self._location = transform.location
        return (transform.location.x, transform.location.y, math.radians(transform.rotation.yaw), velocity.length())

    def _off_driving_lane(self) -> bool:
        """Whether the ego's last measured location lies outside every driving lane of the map (the leaderboard's
        off-road; ``Map.get_waypoint`` runs on the client's copy of the map, no RPC)."""
        driving = self._carla.LaneType.Driving
        return self._map.get_waypoint(self._location, project_to_road=False, lane_type=driving) is None

    def _preprocess(self, readings: SensorReadings) -> np.ndarray:
        self._last_rgb = readings.rgb
        self.last_image_frame = readings.frame
        return preprocess_image(readings.rgb, self.config.image_size, self.config.grayscale)

    def _abort_episode(self, error: BaseException) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Truncate after a tick or sensor failure; the next reset reconnects.

        The reason is ``"server_lost"`` when the server no longer answers (the actors could not be destroyed),
        ``"carla_error"`` when it still does (a lost sensor frame, one slow tick).
        """
        message = f"{type(error).__name__}: {error}"
        answering = self._disconnect()
        reason = "carla_error" if answering else "server_lost"
        logger.warning(
            "CARLA step failed (%s), truncating the episode and reconnecting on reset: %s",
            "server still answers" if answering else f"server {self.config.host}:{self.config.port} lost",
            message,
        )
        obs = repeat_newest_frame(self._last_obs or {}, self.frame_stack)  # no new frame: the newest repeats
        info = {"reason": reason, "carla_error": message, "reward_terms": dict.fromkeys(REWARD_TERMS, 0.0)}
        return obs, 0.0, False, True, info

    # ------------------------------------------------------------------ gymnasium API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Destroy the previous episode's actors, reconnect if needed, and start a new episode.

        :param seed: seeds ``self.np_random`` (route and NPC choice); the first reset uses ``config.seed`` if None.
        :param options: unused.
        A lost server is reconnected with backoff: up to ``reconnect_attempts`` tries, waiting
        ``reconnect_delay_s`` before the second and doubling up to ``reconnect_max_delay_s``.

        :return: the first observation and an info dict (``reason`` None, route length, NPCs spawned,
            ``reset_attempts``: tries this reset needed).
        :raises CarlaConnectionError: if the server still fails on the last attempt (all actors are destroyed first).
        """
        if seed is None and not self._seeded:
            seed = self.config.seed
        super().reset(seed=seed)
        self._seeded = True
        self._ego, self._episode_over, self._interrupted = None, True, False
        if self._actors is not None:
            try:
                self._actors.destroy_all()
            except CARLA_FAILURES as e:
                logger.warning("CARLA server failed while destroying the last episode's actors; reconnecting: %s", e)
                self._disconnect()
        cfg = self.config
        for attempt in range(1, cfg.reconnect_attempts + 1):
            try:
                if self._client is None and self.server is not None:
                    if attempt > 1 and self.server.running:  # it runs but the last attempt failed: hung
                        self.server.restart(f"reset attempt {attempt - 1} failed while it was running")
                    else:
                        self.server.ensure_running()
                if self._client is None:
                    self._connect()
                obs, info = self._start_episode_or_clean_up()
            except CarlaConnectionError as e:
                if attempt == cfg.reconnect_attempts:
                    if attempt == 1:
                        raise
                    raise CarlaConnectionError(f"{e} (gave up after {attempt} reset attempts)") from e
                delay_s = reconnect_delay_s(cfg, attempt)
                logger.warning(
                    "reset attempt %d of %d failed (%s); reconnecting to %s:%s in %.1f s",
                    attempt,
                    cfg.reconnect_attempts,
                    e,
                    cfg.host,
                    cfg.port,
                    delay_s,
                )
                _sleep(delay_s)
                continue
            info["reset_attempts"] = attempt
            return obs, info
        raise AssertionError("unreachable")  # pragma: no cover

    def _start_episode_or_clean_up(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; on any exception destroy what was spawned, and on a server failure disconnect.

        :raises CarlaConnectionError: if the server failed (the next attempt reconnects).
        """
        try:
            return self._start_episode()
        except BaseException as e:
            try:
                if self._actors is not None:
                    self._actors.destroy_all()
            except CARLA_FAILURES as cleanup_error:
                logger.warning("cleanup after a failed reset also failed: %s", cleanup_error)
            if isinstance(e, CARLA_FAILURES) and not isinstance(e, CarlaSpawnError):
                self._disconnect()
                raise CarlaConnectionError(
                    f"CARLA server at {self.config.host}:{self.config.port} failed during reset: {e}"
                ) from e
            raise

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply ``[steer, throttle_brake]``, tick the world once and read the frame-matched sensors.

        :param action: array of shape (2,), finite; values outside [-1, 1] are clipped.
        :return: observation, reward, terminated, truncated, info (``reason``, ``reward_terms``, measurements).
        :raises ValueError: if the action has the wrong shape or is not finite.
        :raises RuntimeError: if called before :meth:`reset` or after the episode ended.
        """
        action = check_action(action, self._action_box)
        if self._interrupted:  # another env of this process took the server over (its evaluation episodes)
            self._interrupted = False
            obs = repeat_newest_frame(self._last_obs or {}, self.frame_stack)
            return obs, 0.0, False, True, {"reason": "interrupted", "reward_terms": dict.fromkeys(REWARD_TERMS, 0.0)}
        route = self._route
        if self._episode_over or route is None:
            raise RuntimeError(f"{type(self).__name__}.step() needs a running episode: call reset() first")
        cfg = self.config
        steer, throttle_brake = float(action[0]), float(action[1])
        _, throttle, brake = pedal_control(steer, throttle_brake, cfg.max_brake, "split")
        control = self._carla.VehicleControl(throttle=throttle, steer=steer, brake=brake)
        try:
            self._ego.apply_control(control)
            readings = self._sensors.collect(self._world.tick(cfg.timeout_s), cfg.timeout_s)
            x, y, yaw, speed = self._measure()
        except CARLA_FAILURES as e:
            return self._abort_episode(e)
        self._steps += 1
        self._stuck.update(speed < cfg.stuck_speed_mps)
        projection = route.project(x, y, s_hint_m=self._s_m, window_m=PROJECTION_WINDOW_M)
        progress_m, self._s_m = projection.s_m - self._s_m, projection.s_m
        heading_error = wrap_angle(yaw - projection.tangent_yaw_rad)
        collision, lane_invasion = bool(readings.collisions), bool(readings.lane_invasions)
        off_road = abs(projection.lateral_m) > cfg.max_lateral_deviation_m
        remaining_m = route.length_m - projection.s_m
        reason, terminated = end_reason(cfg, collision, off_road, remaining_m, self._steps, self._stuck.count)
        target = projection.target_speed_mps
        inputs = RewardInputs(
            speed_mps=speed,
            target_speed_mps=target if math.isfinite(target) and target > 0 else cfg.reward.target_speed_mps,
            heading_error_rad=heading_error,
            lateral_m=projection.lateral_m,
            half_lane_width_m=projection.half_lane_width_m,
            progress_m=progress_m,
            steer_change=steer - float(self._prev_action[0]),
            throttle_brake_change=throttle_brake - float(self._prev_action[1]),
            lane_invasion=lane_invasion,
            collision=collision,
            off_road=off_road,
            stuck=reason == "stuck",
        )
        terms = compute_reward_terms(inputs, cfg.reward)
        self._prev_action = action
        vector = observation_vector(route, projection, (x, y, yaw, speed), cfg.route)
        obs = {"image": self._frames.push(self._preprocess(readings)), "vector": vector}
        self._last_obs = obs
        self._episode_over = reason is not None
        info = {
            "reason": reason,
            "reward_terms": terms,
            "speed_mps": float(speed),
            "lateral_m": projection.lateral_m,
            "heading_error_rad": heading_error,
            "route_progress_m": projection.s_m,
            "route_length_m": route.length_m,
            "collision": collision,
            "lane_invasion": lane_invasion,
            "sim_time_s": self._steps * cfg.fixed_delta_seconds,
            # for the leaderboard metrics (sb3_carla_td3.validation.leaderboard)
            "collision_types": [record.other_type_id for record in readings.collisions],
            "lane_invasions": len(readings.lane_invasions),
            "off_driving_lane": self._off_driving_lane(),
        }
        truncated = reason is not None and not terminated
        return {k: v.copy() for k, v in obs.items()}, float(sum(terms.values())), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The latest camera image.

        :return: uint8 ``(camera.height, camera.width, 3)`` RGB with ``render_mode="rgb_array"``; None otherwise.
        """
        if self.render_mode is None:
            gym.logger.warn(
                "render() was called without a render mode; create the env with "
                "CarlaEnv(config, render_mode='rgb_array') to get camera images."
            )
            return None
        return None if self._last_rgb is None else self._last_rgb.copy()

    def close(self) -> None:
        """Destroy every actor, restore the world settings found on connect and drop the client. Idempotent.

        The settings are restored through a fresh client when the env's own is gone (after a time-out); a server
        found in synchronous mode left over by another client gets asynchronous mode back, not that leftover.
        """
        try:
            if self._actors is not None:
                self._actors.destroy_all()
        except CARLA_FAILURES as e:
            logger.warning("CARLA server did not answer while closing the env: %s", e)
        try:
            if not self._restore_settings():
                logger.warning(
                    "CARLA server at %s:%s may be left in synchronous mode: no client could restore its settings",
                    self.config.host,
                    self.config.port,
                )
        finally:
            self._settings_changed = False
            self._leave_registry()
            self._client = self._world = self._map = self._planner = self._actors = None
            self._ego, self._episode_over = None, True
            if self.server is not None:
                self.server.stop()

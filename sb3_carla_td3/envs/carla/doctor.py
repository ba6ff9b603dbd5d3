"""``sb3-carla-td3 doctor``: check a live CARLA server the way :class:`~sb3_carla_td3.envs.carla.env.CarlaEnv` will use
it, before a multi-hour run, and name the fix for each failure.

Checks, in order (each gives one :class:`CheckResult`, printed as one PASS/FAIL line):

1. ``port``: the port probe of :func:`~sb3_carla_td3.envs.carla.connection.probe_carla_server`, from a subprocess,
   so that a service that is not CARLA (which makes libcarla abort the process) only kills the subprocess. No
   ``carla.Client`` is created in this process before it passes; when it fails, nothing else runs.
2. ``versions``: server and client versions are equal.
3. ``traffic_manager_port``: ``tm_port`` is free on this machine (the Traffic Manager runs in the client process).
4. ``settings``: the world is not in a synchronous mode left by a crashed client (it would freeze every client that
   does not tick); the settings found are restored at the end, a leftover synchronous mode as asynchronous mode.
5. ``map``: the loaded map; with ``town``, that map is loaded if another one is.
6. ``spawn``: the configured ego with the env's camera, collision and lane-invasion sensors.
7. ``frames``: ``ticks`` synchronous ticks, each with the camera image of its own frame id (the env's
   :class:`~sb3_carla_td3.envs.carla.sensors.SensorSuite`); the sensor latency is the wait for the image after
   ``world.tick()`` returned.
8. ``tick_rate``: frames per second of tick plus frame-matched image, at least ``min_fps``.
9. ``route``: one route planned the way the env plans it (the configured one, else between two spawn points).
10. ``cleanup``: every actor the doctor spawned is destroyed, 0 remain, and the settings are back (asynchronous mode).
"""

from __future__ import annotations

import math
import socket
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sb3_carla_td3.envs.carla.actors import ActorLifecycle, CarlaSpawnError, spawn_transforms
from sb3_carla_td3.envs.carla.config import CarlaConfig
from sb3_carla_td3.envs.carla.connection import CarlaBackend, probe_carla_server, server_start_hint
from sb3_carla_td3.envs.carla.episode import fixed_route, random_route, sensor_specs
from sb3_carla_td3.envs.carla.routes import RouteNotFoundError, RoutePlanner, load_waypoint_file
from sb3_carla_td3.envs.carla.sensors import SensorFrameError, SensorSuite, SensorTimeoutError
from sb3_carla_td3.errors import CarlaConnectionError, ConfigError

#: Exceptions that mean "the server stopped answering" (libcarla raises RuntimeError on RPC time-outs).
_SERVER_FAILURES = (RuntimeError, TimeoutError)
#: Consecutive lost camera frames after which the frame check stops ticking.
MAX_CONSECUTIVE_LOST = 3
#: Frames of the camera + vector recipe's budget, for the wall-time estimate of the tick-rate line.
RECIPE_FRAMES = 120_000
#: Spawn points tried for the ego before the spawn check fails.
SPAWN_TRIES = 10

Probe = Callable[[str, int, float], tuple[str, str]]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one doctor check.

    :param name: the check, e.g. ``"frames"``
    :param passed: whether it passed
    :param detail: what was found, with the numbers
    :param fix: what to do about a failure ("" when it passed)
    """

    name: str
    passed: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        """:return: ``"PASS name: detail"`` or ``"FAIL name: detail Fix: fix"``"""
        text = f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.detail}"
        return f"{text} Fix: {self.fix}" if self.fix and not self.passed else text


def tm_port_free(port: int) -> bool:
    """Whether ``port`` can be bound on this machine (as the Traffic Manager will bind it).

    :param port: the Traffic Manager port
    :return: False when another process (another run's Traffic Manager, any service) holds it
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


class _Doctor:
    """The state of one doctor run: the connection, what was spawned and the settings to restore."""

    def __init__(self, config: CarlaConfig, backend: CarlaBackend | None, report: Callable[[CheckResult], None]) -> None:
        self.config, self._backend, self._report = config, backend, report
        self.results: list[CheckResult] = []
        self.where = f"{config.host}:{config.port}"
        self.client: Any = None
        self.world: Any = None
        self.actors: ActorLifecycle | None = None
        self.sensors = SensorSuite()
        self.restore: Any = None

    def emit(self, name: str, passed: bool, detail: str, fix: str = "") -> bool:
        result = CheckResult(name, passed, detail, fix)
        self.results.append(result)
        self._report(result)
        return passed

    @property
    def _carla(self) -> Any:  # the name the API-conformance test scans for
        return self.backend.carla

    @property
    def backend(self) -> CarlaBackend:
        if self._backend is None:  # imported only once the probe says a CARLA server answers
            self._backend = CarlaBackend.default()
        return self._backend

    # ------------------------------------------------------------------ checks before the connection
    def probe(self, probe: Probe) -> tuple[str, str] | None:
        cfg = self.config
        try:
            server_version, client_version = probe(cfg.host, cfg.port, cfg.timeout_s)
        except CarlaConnectionError as e:
            self.emit("port", False, str(e), f"start a server (see above) or pass the right --host/--port; {self.where} "
                      "must be a CARLA 0.9.16 RPC port")  # fmt: skip
            return None
        self.emit("port", True, f"a CARLA server answers at {self.where} (probed from a subprocess)")
        return server_version, client_version

    def versions(self, server_version: str, client_version: str) -> None:
        self.emit(
            "versions",
            server_version == client_version,
            f"server {server_version}, client {client_version}",
            f'install the client of the server\'s version (pip install "carla=={server_version}") or run a '
            f"CARLA {client_version} server; mismatched versions fail in the middle of a run",
        )

    def tm_port(self) -> None:
        port = self.config.tm_port
        free = tm_port_free(port)
        detail = f"Traffic Manager port {port} is {'free' if free else 'in use'} on this machine"
        self.emit("traffic_manager_port", free, detail,
                  f"another run's Traffic Manager or another service holds port {port}: set env.tm_port to a free port "
                  f"(one per client on a machine, e.g. {port + 1})")  # fmt: skip

    # ------------------------------------------------------------------ checks on the world
    def connect(self) -> bool:
        cfg = self.config
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a version mismatch was reported by its own line
                self.client = self.backend.connect(cfg.host, cfg.port, cfg.timeout_s)
            self.world = self.client.get_world()
        except (CarlaConnectionError, *_SERVER_FAILURES) as e:
            self.emit("connect", False, f"connecting to {self.where} failed: {e}", server_start_hint(cfg.port))
            return False
        return True

    def settings(self) -> None:
        found = self.world.get_settings()
        leftover = bool(found.synchronous_mode)
        if leftover:
            detail = (f"the world is in synchronous mode (fixed_delta_seconds={found.fixed_delta_seconds}), left by a "
                      "client that did not restore it: it is frozen for every client that does not tick")  # fmt: skip
            found.synchronous_mode, found.fixed_delta_seconds = False, None
        else:
            detail = f"asynchronous mode, fixed_delta_seconds={found.fixed_delta_seconds}"
        self.restore = found
        self.emit("settings", not leftover, detail,
                  "the doctor restores asynchronous mode when it ends (CarlaEnv does the same on close); run the "
                  "doctor again, and stop the crashed run's processes")  # fmt: skip

    def map(self, town: str | None) -> None:
        current = self.world.get_map().name.rsplit("/", 1)[-1]
        if town is None or town == current:
            note = "" if current == self.config.town else f"; the env will load {self.config.town} (env.town) on connect"
            self.emit("map", True, f"{current} is loaded{note}")
            return
        started = time.monotonic()
        try:
            self.world = self.client.load_world(town)
        except RuntimeError as e:
            self.emit("map", False, f"loading {town} failed ({e}); {current} stays loaded",
                      "pass a map the server has (e.g. Town01 ... Town07, Town10HD_Opt; "
                      "client.get_available_maps() lists them) or omit --town")  # fmt: skip
            return
        self.emit("map", True, f"loaded {town} in {time.monotonic() - started:.1f} s (was {current})")

    def spawn(self) -> Any:
        cfg, carla = self.config, self._carla
        settings = self.world.get_settings()
        settings.synchronous_mode, settings.fixed_delta_seconds = True, cfg.fixed_delta_seconds
        settings.no_rendering_mode = False
        self.world.apply_settings(settings)
        self.actors = ActorLifecycle(carla, self.client, self.world, cfg.tm_port)
        points = spawn_transforms(carla, self.world.get_map())
        ego, errors = None, []
        for transform in points[:SPAWN_TRIES]:
            try:
                ego = self.actors.spawn_ego(cfg.ego_blueprint, transform)
                break
            except (CarlaSpawnError, IndexError) as e:  # IndexError: BlueprintLibrary.find of an unknown id
                errors.append(str(e))
                if isinstance(e, IndexError):
                    break
        fix = (f"check env.ego_blueprint ({cfg.ego_blueprint!r}: a vehicle.* id of the blueprint library) and that the "
               "map has free spawn points (another client's vehicles may stand on them)")  # fmt: skip
        if ego is None:
            self.emit("spawn", False, f"no ego spawned in {len(errors)} tries ({len(points)} spawn points): "
                      f"{errors[-1] if errors else 'the map has no spawn points'}", fix)  # fmt: skip
            return None
        callbacks = (self.sensors.on_image, self.sensors.on_collision, self.sensors.on_lane_invasion)
        try:
            self.actors.spawn_sensors(ego.id, sensor_specs(carla, cfg.camera, callbacks))
        except CarlaSpawnError as e:
            self.emit("spawn", False, str(e), "check the camera section of the config (size, fov)")
            return None
        camera = cfg.camera
        self.emit("spawn", True, f"{cfg.ego_blueprint} with a {camera.width}x{camera.height} camera, collision and "
                  "lane-invasion sensors (synchronous mode, "
                  f"fixed_delta_seconds={cfg.fixed_delta_seconds})")  # fmt: skip
        return ego

    def frames(self, ego: Any, ticks: int, min_fps: float) -> None:
        cfg = self.config
        ego.apply_control(self._carla.VehicleControl(throttle=0.0, steer=0.0, brake=1.0))
        matched_s, latencies, lost = [], [], []
        consecutive_lost = 0
        for _ in range(ticks):
            started = time.monotonic()
            frame = self.world.tick(cfg.timeout_s)
            ticked = time.monotonic()
            try:
                self.sensors.collect(frame, cfg.timeout_s)
            except (SensorTimeoutError, SensorFrameError) as e:
                lost.append(str(e))
                consecutive_lost += 1
                if consecutive_lost >= MAX_CONSECUTIVE_LOST:
                    break
                continue
            consecutive_lost = 0
            latencies.append(time.monotonic() - ticked)
            matched_s.append(time.monotonic() - started)
        ran = len(matched_s) + len(lost)
        if latencies:
            latency = (f"; sensor latency median {1e3 * statistics.median(latencies):.1f} ms, "
                       f"max {1e3 * max(latencies):.1f} ms")  # fmt: skip
        else:
            latency = ""
        detail = f"{len(matched_s)} of {ran} ticks delivered the camera image of their own frame{latency}"
        if lost:
            detail += f" (first loss: {lost[0]})"
        self.emit("frames", len(matched_s) == ticks and not lost, detail,
                  f"the camera sends no image per tick: start the server with -RenderOffScreen (not -nullrhi), "
                  f"check that its streaming port {cfg.port + 1} is reachable from here and not used by another "
                  "process, and that the GPU is not out of memory (server log)")  # fmt: skip
        self.tick_rate(matched_s, min_fps)

    def tick_rate(self, matched_s: list[float], min_fps: float) -> None:
        if not matched_s:
            self.emit("tick_rate", False, "not measured: no tick delivered its image", "fix the frames check first")
            return
        fps = len(matched_s) / sum(matched_s)
        hours = RECIPE_FRAMES / fps / 3600.0
        detail = (f"{fps:.1f} frames/s (tick + frame-matched image, {fps * self.config.fixed_delta_seconds:.2f}x real "
                  f"time): {RECIPE_FRAMES // 1000}K frames take {hours:.1f} h on this server alone")  # fmt: skip
        self.emit("tick_rate", fps >= min_fps, detail + f" (bar: >= {min_fps:g} frames/s)",
                  "a slow server: use a GPU, -quality-level=Low, a smaller camera, fewer NPCs, or several servers "
                  "(docs/carla.md, several servers)")  # fmt: skip

    def route(self) -> None:
        cfg = self.config
        world_map = self.world.get_map()
        planner = RoutePlanner(world_map, cfg.route.resolution_m)
        try:
            rows = load_waypoint_file(cfg.route.waypoint_file) if cfg.route.waypoint_file else None
            planned = fixed_route(self._carla, world_map, planner, cfg.route, rows)
            source = "the configured route"
            if planned is None:
                points = spawn_transforms(self._carla, world_map)
                planned = random_route(world_map, planner, points, cfg.route, np.random.default_rng(cfg.seed))
                source = "a random route between two spawn points"
        except (RouteNotFoundError, CarlaSpawnError, ConfigError) as e:
            self.emit("route", False, f"no route: {e}", "set route.start_xy and route.end_xy on lanes that connect "
                      "(in driving direction) or lower route.min_length_m")  # fmt: skip
            return
        route, _ = planned
        self.emit("route", True, f"planned {source}: {route.length_m:.0f} m, {len(route.points)} points")

    def cleanup(self) -> None:
        """Destroy what was spawned, restore the settings, and check both took effect. Never raises."""
        if self.world is None:
            return
        spawned = [] if self.actors is None else list(self.actors.actor_ids)
        try:
            if self.actors is not None:
                self.actors.destroy_all()
            if self.world.get_settings().synchronous_mode:
                self.world.tick(self.config.timeout_s)  # let the server process the destruction
            if self.restore is not None:
                self.world.apply_settings(self.restore)
            remaining = self._remaining(spawned)
            synchronous = bool(self.world.get_settings().synchronous_mode)
        except _SERVER_FAILURES as e:
            self.emit("cleanup", False, f"the server stopped answering while cleaning up ({e}); {len(spawned)} actors "
                      "may remain", "restart the server, or run the doctor again once it answers (CarlaEnv also "
                      "removes its leftovers on connect)")  # fmt: skip
            return
        detail = (f"{len(spawned)} actors destroyed, {len(remaining)} remain; "
                  f"{'synchronous' if synchronous else 'asynchronous'} mode")  # fmt: skip
        self.emit("cleanup", not remaining and not synchronous, detail,
                  f"actors {remaining[:5]} or the synchronous mode outlived the doctor: restart the server")  # fmt: skip

    def _remaining(self, spawned: list[int]) -> list[int]:
        """Ids of ``spawned`` the world still lists, polled for up to ``timeout_s`` (the actor list of an
        asynchronous world catches up within a few server frames)."""
        deadline = time.monotonic() + self.config.timeout_s
        while True:
            remaining = [actor.id for actor in self.world.get_actors(spawned)] if spawned else []
            if not remaining or time.monotonic() >= deadline:
                return remaining
            time.sleep(0.1)


def run_doctor(
    config: CarlaConfig,
    town: str | None = None,
    ticks: int = 20,
    min_fps: float = 5.0,
    backend: CarlaBackend | None = None,
    probe: Probe | None = None,
    report: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Check the CARLA server of ``config`` (host, port, tm_port, timeout_s, ego, camera, route) and name the fixes.

    Run it before training, not during: it switches the world to synchronous mode and ticks it for a moment.

    :param config: the env config to check against
    :param town: a map to load if the server has another (None: keep the loaded map)
    :param ticks: synchronous ticks of the frame check, >= 1
    :param min_fps: lowest acceptable tick rate in frames per second, > 0
    :param backend: where ``carla`` comes from and how to connect (None: the installed package); tests pass a fake
    :param probe: ``probe(host, port, timeout_s) -> (server_version, client_version)`` raising
        :class:`~sb3_carla_td3.errors.CarlaConnectionError` (None: :func:`probe_carla_server`, a subprocess)
    :param report: called with each result as soon as it is known (e.g. to print it before a slow next check)
    :return: the results, in order; when the port or connect check fails, the later checks are not run
    :raises ValueError: if ``ticks`` or ``min_fps`` is out of range
    """
    if isinstance(ticks, bool) or not isinstance(ticks, int) or ticks < 1:
        raise ValueError(f"ticks must be an integer >= 1, got {ticks!r}")
    if not (isinstance(min_fps, (int, float)) and math.isfinite(min_fps) and min_fps > 0):
        raise ValueError(f"min_fps must be a finite number > 0, got {min_fps!r}")
    doctor = _Doctor(config, backend, report or (lambda result: None))
    versions = doctor.probe(probe or probe_carla_server)
    if versions is None:
        return doctor.results
    doctor.versions(*versions)
    doctor.tm_port()
    if not doctor.connect():
        return doctor.results
    step = "settings"
    try:
        doctor.settings()
        step = "map"
        doctor.map(town)
        step = "spawn"
        ego = doctor.spawn()
        if ego is not None:
            step = "frames"
            doctor.frames(ego, ticks, min_fps)
        step = "route"
        doctor.route()
    except _SERVER_FAILURES as e:
        doctor.emit(step, False, f"the server at {doctor.where} stopped answering ({type(e).__name__}: {e})",
                    "look at the server's log: it may have crashed or run out of GPU memory")  # fmt: skip
    finally:
        doctor.cleanup()
    return doctor.results

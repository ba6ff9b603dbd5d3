"""An in-process fake CARLA server, so the env's real lifecycle code runs in tests without a simulator.

:class:`FakeCarlaServer` keeps actors, frame ids, world settings and a kinematic bicycle model for vehicles.
Its map is a real ``carla.Map`` built offline from OpenDRIVE text, and the value types (``Location``,
``Transform``, ``VehicleControl``, ``WorldSettings``...) are the real ones; only what needs a server is faked
(client, world, Traffic Manager, blueprints, actors, sensors with ``listen`` callbacks, batch commands; see
:mod:`sb3_carla_td3.envs.carla.fake_objects`). Every fake stands for the real class named in its
``carla_name`` and offers no public name that class lacks (``tests/test_carla_api.py`` checks this), so code
that runs against the fake calls only real API.

Use it through :attr:`FakeCarlaServer.backend`::

    server = FakeCarlaServer(Path("tests/data/mini_town.xodr").read_text())
    env = CarlaEnv(CarlaConfig(town="mini_town"), backend=server.backend)

Failure injection (:meth:`FakeCarlaServer.fail_call`, :meth:`~FakeCarlaServer.drop_camera_frames`, ...) drives
the error paths. Needs the ``carla`` wheel (for ``carla.Map``).
"""

from __future__ import annotations

import itertools
import math
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np

from sb3_carla_td3.envs.carla.connection import CarlaBackend, import_carla
from sb3_carla_td3.envs.carla.fake_objects import (
    FakeActor,
    FakeActorBlueprint,
    FakeBlueprintLibrary,
    FakeCollisionEvent,
    FakeDestroyActor,
    FakeImage,
    FakeLaneInvasionEvent,
    FakeLaneMarking,
    FakeResponse,
    FakeSensor,
    FakeSetAutopilot,
    FakeSpawnActor,
    FakeTrafficManager,
    FakeVehicle,
    _ServerBound,
)
from sb3_carla_td3.envs.carla.sharing import OWNER_SEPARATOR
from sb3_carla_td3.errors import CarlaConnectionError

#: Vehicles spawned closer than this (metres) to another vehicle fail, as on a real server.
SPAWN_CLEARANCE_M = 2.0
#: Blueprints the fake library offers, with their attributes.
BLUEPRINTS: dict[str, dict[str, str]] = {
    "vehicle.tesla.model3": {"number_of_wheels": "4", "role_name": "autopilot"},
    "vehicle.audi.a2": {"number_of_wheels": "4", "role_name": "autopilot"},
    "vehicle.bh.crossbike": {"number_of_wheels": "2", "role_name": "autopilot"},
    "sensor.camera.rgb": {"image_size_x": "800", "image_size_y": "600", "fov": "90", "sensor_tick": "0.0", "role_name": ""},
    "sensor.other.collision": {"role_name": ""},
    "sensor.other.lane_invasion": {"role_name": ""},
}


def timeout_error(host: str = "127.0.0.1", port: int = 2000, timeout_s: float = 10.0) -> RuntimeError:
    """The ``RuntimeError`` libcarla raises when the server does not answer an RPC in time.

    :param host: server host in the message.
    :param port: server port in the message.
    :param timeout_s: the time-out in seconds, in the message.
    :return: the exception (not raised).
    """
    return RuntimeError(
        f"time-out of {round(timeout_s * 1000)}ms while waiting for the simulator, make sure the simulator is ready "
        f"and connected to {host}:{port}"
    )


class FakeWorld(_ServerBound):
    """Fake ``carla.World``: settings, ticks and actors live on the server; the map is a real ``carla.Map``."""

    carla_name = "World"

    def get_map(self) -> Any:
        return self._server.map

    def get_settings(self) -> Any:
        return self._server._copy_settings(self._server.settings)

    def apply_settings(self, settings: Any) -> int:
        self._server._maybe_fail("World.apply_settings")
        self._server.settings = self._server._copy_settings(settings)
        return self._server.frame

    def tick(self, seconds: float = 0.0) -> int:  # 0.9.16's default: 0.0 (no time-out); the env always passes one
        return self._server._tick()

    def get_blueprint_library(self) -> FakeBlueprintLibrary:
        return FakeBlueprintLibrary(self._server, list(self._server._blueprints))

    def get_actor(self, actor_id: int) -> FakeActor | None:
        return self._server.actors.get(actor_id)

    def get_actors(self, actor_ids: list[int] | None = None) -> list[FakeActor]:
        actors = self._server.actors
        return list(actors.values()) if actor_ids is None else [actors[i] for i in actor_ids if i in actors]


class FakeClient(_ServerBound):
    """Fake ``carla.Client``: batch commands are applied by the server; ``do_tick`` ticks once afterwards."""

    carla_name = "Client"

    def set_timeout(self, seconds: float) -> None:
        self._timeout_s = seconds

    def get_server_version(self) -> str:
        return self._server.server_version

    def get_client_version(self) -> str:
        return "0.9.16"

    def get_world(self) -> FakeWorld:
        self._server._maybe_fail("Client.get_world")
        return FakeWorld(self._server)

    def load_world(self, map_name: str, reset_settings: bool = True, map_layers: Any = None) -> FakeWorld:
        self._server.loaded_worlds.append(map_name)
        if reset_settings:  # as 0.9.16: the new world starts with default settings (asynchronous mode)
            self._server.settings = import_carla().WorldSettings()
        return FakeWorld(self._server)

    def get_trafficmanager(self, port: int = 8000) -> FakeTrafficManager:
        return FakeTrafficManager(self._server, port)

    def apply_batch_sync(self, commands: list[Any], do_tick: bool = False) -> list[FakeResponse]:
        self._server._maybe_fail("Client.apply_batch_sync")
        responses = [self._server._apply(command) for command in commands]
        if do_tick:
            self._server._tick()
        return responses


class FakeCarlaServer:
    """A fake CARLA server on a real offline ``carla.Map``.

    :param xodr_text: OpenDRIVE text of the map.
    :param map_name: name reported by ``world.get_map().name`` (the env's ``town`` should match it).
    :param sensor_delay_s: deliver sensor data from a timer thread after this many seconds (0: during the tick),
        to exercise the env's waiting on frame ids; >= 0.
    """

    def __init__(self, xodr_text: str, map_name: str = "mini_town", sensor_delay_s: float = 0.0) -> None:
        carla = import_carla()
        self.map = carla.Map(map_name, xodr_text)
        command = SimpleNamespace(
            SpawnActor=FakeSpawnActor,
            SetAutopilot=FakeSetAutopilot,
            DestroyActor=FakeDestroyActor,
            FutureActor=0,
            Response=FakeResponse,
        )
        #: Stand-in for the ``carla`` module: real value types plus the fake ``command`` namespace.
        self.carla = SimpleNamespace(
            **{
                name: getattr(carla, name)
                for name in (
                    "Location",
                    "Rotation",
                    "Transform",
                    "Vector3D",
                    "VehicleControl",
                    "WorldSettings",
                    "LaneType",
                    "Map",
                )
            },
            command=command,
        )
        #: Pass as ``CarlaEnv(..., backend=server.backend)``.
        self.backend = CarlaBackend(carla=self.carla, connect=self.connect)
        self.sensor_delay_s = sensor_delay_s
        self.frame = 1000
        self.actors: dict[int, FakeActor] = {}
        self.settings = carla.WorldSettings()
        self.tm_synchronous: dict[int, bool] = {}
        self.tm_seeds: dict[int, int] = {}
        self.connections = 0
        #: False between :meth:`kill` and :meth:`restart`.
        self.alive = True
        self._generation = 0
        self.loaded_worlds: list[str] = []
        self.samples: dict[type, Any] = {}  # one instance of every fake class handed out (for the API test)
        self._ids = itertools.count(100)
        self._failures: dict[str, list[BaseException]] = {}
        self._camera = {"drop": 0, "stale": 0, "skip": 0}
        self._events = {"lane_invasion": 0}
        #: The other actor of each collision still to report, one per tick (None: an event without an actor).
        self._collisions: list[FakeActor | None] = []
        #: What ``Client.get_server_version`` (and :meth:`probe`) answer; set another to inject a mismatch.
        self.server_version = "0.9.16"
        self._blueprints = [FakeActorBlueprint(self, k, v) for k, v in BLUEPRINTS.items()]

    # ------------------------------------------------------------ test controls
    def connect(self, host: str, port: int, timeout_s: float) -> FakeClient:
        """The backend's connect: a client of this server (fails if :meth:`fail_call` armed ``"connect"``).

        :param host: ignored.
        :param port: ignored.
        :param timeout_s: ignored.
        :return: a new client.
        """
        self._maybe_fail("connect")
        if not self.alive:
            raise CarlaConnectionError(f"No CARLA server at {host}:{port}: connection refused (fake server killed).")
        self.connections += 1
        return FakeClient(self)

    def kill(self) -> None:
        """The server process dies: every call through an existing client, world, Traffic Manager or actor raises
        libcarla's time-out, and :meth:`connect` raises :class:`~sb3_carla_td3.errors.CarlaConnectionError`."""
        self.alive = False

    def drop_connections(self) -> None:
        """Every existing client loses its connection (its calls time out) while the server keeps running with its
        world, settings and actors, as after a network hiccup; new connections work."""
        self._generation += 1

    def restart(self) -> None:
        """A fresh server process on the same port: no actors, default world settings, no Traffic Manager state.
        Clients of the previous process stay dead (their calls time out); new connections work."""
        carla = import_carla()
        self.alive = True
        self._generation += 1
        self.actors = {}
        self.settings = carla.WorldSettings()
        self.tm_synchronous = {}
        self.tm_seeds = {}

    def fail_call(self, name: str, error: BaseException | None = None, times: int = 1) -> None:
        """Make the next ``times`` calls of ``name`` raise ``error`` (default: libcarla's time-out error).

        :param name: ``"World.tick"``, ``"Client.apply_batch_sync"``, ``"Client.get_world"``,
            ``"World.apply_settings"``, ``"TrafficManager.set_synchronous_mode"``, ``"Sensor.listen"`` or
            ``"connect"``.
        :param error: exception to raise; None raises :func:`timeout_error`.
        :param times: number of calls that fail, >= 1.
        """
        self._failures.setdefault(name, []).extend([error or timeout_error()] * times)

    def drop_camera_frames(self, count: int = 1) -> None:
        """The camera sends nothing on the next ``count`` ticks (the env's sensor wait times out).

        :param count: number of ticks, >= 1.
        """
        self._camera["drop"] += count

    def send_stale_images(self, count: int = 1) -> None:
        """On the next ``count`` ticks the camera first sends a white image of the previous frame, then the right one.

        :param count: number of ticks, >= 1.
        """
        self._camera["stale"] += count

    def skip_camera_frame(self, count: int = 1) -> None:
        """On the next ``count`` ticks the camera sends the image of the following frame instead of this one.

        :param count: number of ticks, >= 1.
        """
        self._camera["skip"] += count

    def inject_collision(self, other: int | str | None = None) -> None:
        """Collision sensors report an event on the next tick (several injections: one per tick).

        :param other: the other actor: the id of a live actor (e.g. an NPC vehicle), a ``type_id`` for an actor that
            is not in the actor list (e.g. ``"static.pole"``, a map object as 0.9.16 may report it), or None for an
            event without an actor (the other way 0.9.16 may report a static object; not confirmed offline)
        """
        if isinstance(other, int):
            self._collisions.append(self.actors[other])
        elif isinstance(other, str):
            blueprint = FakeActorBlueprint(self, other, {})
            transform = self.carla.Transform(self.carla.Location(), self.carla.Rotation())
            self._collisions.append(FakeActor(self, 0, blueprint, transform, None))
        else:
            self._collisions.append(None)

    def probe(self, host: str, port: int, timeout_s: float) -> tuple[str, str]:
        """Stand-in for :func:`~sb3_carla_td3.envs.carla.connection.probe_carla_server` (no subprocess, no socket).

        :param host: named in the error.
        :param port: named in the error.
        :param timeout_s: ignored.
        :return: ``(server_version, client_version)``.
        :raises CarlaConnectionError: after :meth:`kill`, or when :meth:`fail_call` armed ``"connect"``.
        """
        self._maybe_fail("connect")
        if not self.alive:
            raise CarlaConnectionError(f"No CARLA server at {host}:{port}: connection refused (fake server killed).")
        return self.server_version, "0.9.16"

    def inject_lane_invasion(self) -> None:
        """Lane-invasion sensors report a crossed broken line on the next tick."""
        self._events["lane_invasion"] += 1

    def actors_with_role(self, role_name: str) -> list[FakeActor]:
        """Live actors whose ``role_name`` attribute is ``role_name``, with or without an owner tag after it.

        :param role_name: e.g. ``carla_actors.EGO_ROLE``.
        :return: the actors, in spawn order.
        """
        return [a for a in self.actors.values() if a._attributes.get("role_name", "").split(OWNER_SEPARATOR)[0] == role_name]

    def move_actor(self, actor_id: int, x: float, y: float, yaw_deg: float | None = None, speed: float | None = None) -> None:
        """Teleport a live actor.

        :param actor_id: the actor.
        :param x: new x in metres.
        :param y: new y in metres.
        :param yaw_deg: new yaw in degrees; None keeps it.
        :param speed: new speed in m/s; None keeps it.
        """
        actor = self.actors[actor_id]
        actor._x, actor._y = x, y
        actor._yaw_deg = actor._yaw_deg if yaw_deg is None else yaw_deg
        actor._speed = actor._speed if speed is None else speed

    def add_actor(self, blueprint_id: str, x: float, y: float, role_name: str) -> int:
        """Spawn an actor directly, as another client or a crashed run would have.

        :param blueprint_id: a key of :data:`BLUEPRINTS`.
        :param x: x in metres.
        :param y: y in metres.
        :param role_name: its ``role_name`` attribute.
        :return: its actor id.
        """
        carla = self.carla
        blueprint = next(bp for bp in self._blueprints if bp.id == blueprint_id)._copy()
        blueprint.set_attribute("role_name", role_name)
        transform = carla.Transform(carla.Location(x=x, y=y, z=0.5), carla.Rotation())
        return self._apply(FakeSpawnActor(blueprint, transform)).actor_id

    # ------------------------------------------------------------ internals
    def _maybe_fail(self, name: str) -> None:
        pending = self._failures.get(name)
        if pending:
            raise pending.pop(0)

    def _check_connection(self, generation: int) -> None:
        if not self.alive or generation != self._generation:
            raise timeout_error()

    def _check_alive(self, actor: FakeActor, method: str) -> None:
        if not self.alive:
            raise timeout_error()
        if actor.id not in self.actors:
            raise RuntimeError(
                f"trying to operate on a destroyed actor; an actor's function was called ({method}), "
                f"but the actor is already destroyed."
            )
        if method == "listen":
            self._maybe_fail("Sensor.listen")

    def _copy_settings(self, settings: Any) -> Any:
        copy = self.carla.WorldSettings()
        for name in ("synchronous_mode", "no_rendering_mode", "fixed_delta_seconds"):
            setattr(copy, name, getattr(settings, name))
        return copy

    def _apply(self, command: Any) -> FakeResponse:
        self.samples.setdefault(type(command), command)
        if isinstance(command, FakeSpawnActor):
            return self._spawn(command)
        if isinstance(command, FakeDestroyActor):
            actor = self.actors.pop(command.actor_id, None)
            if actor is None:
                return FakeResponse(self, command.actor_id, f"actor {command.actor_id} not found")
            return FakeResponse(self, command.actor_id)
        raise TypeError(f"fake server cannot apply {type(command).__name__}")

    def _spawn(self, command: FakeSpawnActor) -> FakeResponse:
        blueprint, transform = command._blueprint, command.transform
        parent = None
        if command.parent_id:
            parent = self.actors.get(command.parent_id)
            if parent is None:
                return FakeResponse(self, 0, f"parent actor {command.parent_id} not found")
        elif blueprint.id.startswith("vehicle."):
            for other in self.actors.values():
                if (
                    isinstance(other, FakeVehicle)
                    and math.hypot(other._x - transform.location.x, other._y - transform.location.y) < SPAWN_CLEARANCE_M
                ):
                    return FakeResponse(self, 0, "Spawn failed because of collision at spawn position")
        kind = {"vehicle": FakeVehicle, "sensor": FakeSensor}.get(blueprint.id.split(".", 1)[0], FakeActor)
        actor = kind(self, next(self._ids), blueprint, transform, parent)
        self.actors[actor.id] = actor
        for follow_up in command._then:
            if isinstance(follow_up, FakeSetAutopilot) and isinstance(actor, FakeVehicle):
                self.samples.setdefault(type(follow_up), follow_up)
                actor._autopilot = follow_up.enabled
        return FakeResponse(self, actor.id)

    def _deliver(self, callback: Any, data: Any) -> None:
        if self.sensor_delay_s > 0:
            threading.Timer(self.sensor_delay_s, callback, args=(data,)).start()
        else:
            callback(data)

    def _image(self, sensor: FakeSensor, frame: int, white: bool) -> FakeImage:
        """A BGRA image whose content depends only on the sensor's pose (so seeded resets repeat exactly)."""
        width, height = int(sensor._attributes["image_size_x"]), int(sensor._attributes["image_size_y"])
        x, y, _, yaw = sensor._pose()
        base = (round(x * 10) * 7 + round(y * 10) * 13 + round(yaw)) % 256
        grey = (np.add.outer(np.arange(height) * 3, np.arange(width) * 5) + base) % 256
        grey = np.full((height, width), 255) if white else grey
        bgra = np.stack([grey, (grey + 85) % 256, (grey + 170) % 256, np.full_like(grey, 255)], axis=-1)
        return FakeImage(self, frame, width, height, bgra.astype(np.uint8).tobytes())

    def _tick(self) -> int:
        self._maybe_fail("World.tick")
        if not self.settings.synchronous_mode:
            raise RuntimeError("fake server: world.tick() needs synchronous mode (apply_settings first)")
        self.frame += 1
        dt = self.settings.fixed_delta_seconds or 0.05
        for actor in list(self.actors.values()):
            if isinstance(actor, FakeVehicle):
                actor._advance(dt)
        camera, events = dict(self._camera), dict(self._events)
        collision = self._collisions.pop(0) if self._collisions else False
        for sensor in [a for a in self.actors.values() if isinstance(a, FakeSensor) and a._callback is not None]:
            if sensor.type_id == "sensor.camera.rgb" and not camera["drop"]:
                if camera["stale"]:
                    self._deliver(sensor._callback, self._image(sensor, self.frame - 1, white=True))
                frame = self.frame + 1 if camera["skip"] else self.frame
                self._deliver(sensor._callback, self._image(sensor, frame, white=False))
            elif sensor.type_id == "sensor.other.collision" and collision is not False:
                impulse = self.carla.Vector3D(x=800.0, y=0.0, z=0.0)
                self._deliver(sensor._callback, FakeCollisionEvent(self, self.frame, collision, impulse))
            elif sensor.type_id == "sensor.other.lane_invasion" and events["lane_invasion"]:
                markings = [FakeLaneMarking(self, "Broken")]
                self._deliver(sensor._callback, FakeLaneInvasionEvent(self, self.frame, markings))
        self._camera = {k: max(v - 1, 0) for k, v in self._camera.items()}
        self._events = {k: max(v - 1, 0) for k, v in self._events.items()}
        return self.frame

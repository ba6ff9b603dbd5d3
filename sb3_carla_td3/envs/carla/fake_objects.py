"""Fakes of the per-object ``carla`` API (batch commands, blueprints, actors, sensor data, Traffic Manager).

Each class stands for the real class named in ``carla_name`` and offers no public name that class lacks;
state and helpers the fake server needs are private (leading underscore). Methods take the arguments of, and
behave like, the real methods of the same name (see the CARLA 0.9.16 Python API reference), so they are not
documented again here. The server that owns them is :class:`sb3_carla_td3.envs.carla.fake.FakeCarlaServer`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator
from typing import Any, ClassVar

WHEELBASE_M = 2.9
MAX_STEER_RAD = 0.6
MAX_ACCEL_MPS2 = 4.0
MAX_BRAKE_MPS2 = 8.0


class _Fake:
    """Base of the fakes: remembers one sample instance per class on the server (for the API test)."""

    carla_name: ClassVar[str] = ""

    def __init__(self, server: Any) -> None:
        self._server = server
        server.samples.setdefault(type(self), self)


class _ServerBound(_Fake):
    """A fake tied to one connection: its public calls raise libcarla's time-out once its server died or restarted.

    :meth:`~sb3_carla_td3.envs.carla.fake.FakeCarlaServer.kill` and
    :meth:`~sb3_carla_td3.envs.carla.fake.FakeCarlaServer.restart` drive this.
    """

    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self._generation = server._generation

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name != "carla_name":
            server = object.__getattribute__(self, "_server")
            server._check_connection(object.__getattribute__(self, "_generation"))
        return object.__getattribute__(self, name)


# ---------------------------------------------------------------- batch commands (built without a server)
class FakeSpawnActor:
    """``carla.command.SpawnActor(blueprint, transform, parent_id=0)`` with ``then``."""

    carla_name: ClassVar[str] = "command.SpawnActor"

    def __init__(self, blueprint: FakeActorBlueprint, transform: Any, parent_id: int = 0) -> None:
        self._blueprint, self.transform, self.parent_id = blueprint._copy(), transform, parent_id
        self._then: list[Any] = []

    def then(self, command: Any) -> FakeSpawnActor:
        self._then.append(command)
        return self


class FakeSetAutopilot:
    """``carla.command.SetAutopilot(actor_id, enabled, tm_port)``."""

    carla_name: ClassVar[str] = "command.SetAutopilot"

    def __init__(self, actor_id: int, enabled: bool, tm_port: int = 8000) -> None:
        self.actor_id, self.enabled, self.tm_port = actor_id, enabled, tm_port


class FakeDestroyActor:
    """``carla.command.DestroyActor(actor_id)``."""

    carla_name: ClassVar[str] = "command.DestroyActor"

    def __init__(self, actor_id: int) -> None:
        self.actor_id = actor_id


class FakeResponse(_Fake):
    """Fake ``carla.command.Response``: the result of one batch command (``actor_id`` or ``error``)."""

    carla_name = "command.Response"

    def __init__(self, server: Any, actor_id: int = 0, error: str = "") -> None:
        super().__init__(server)
        self.actor_id, self.error = actor_id, error

    def has_error(self) -> bool:
        return bool(self.error)


# ---------------------------------------------------------------- blueprints
class FakeActorAttribute(_Fake):
    """Fake ``carla.ActorAttribute``: one blueprint attribute value."""

    carla_name = "ActorAttribute"

    def __init__(self, server: Any, value: str) -> None:
        super().__init__(server)
        self._value = value

    def as_int(self) -> int:
        return int(self._value)


class FakeActorBlueprint(_Fake):
    """Fake ``carla.ActorBlueprint``: an id and string attributes; ``set_attribute`` rejects unknown names."""

    carla_name = "ActorBlueprint"

    def __init__(self, server: Any, blueprint_id: str, attributes: dict[str, str]) -> None:
        super().__init__(server)
        self.id, self._attributes = blueprint_id, dict(attributes)

    def _copy(self) -> FakeActorBlueprint:
        return FakeActorBlueprint(self._server, self.id, self._attributes)

    def has_attribute(self, name: str) -> bool:
        return name in self._attributes

    def get_attribute(self, name: str) -> FakeActorAttribute:
        return FakeActorAttribute(self._server, self._attributes[name])

    def set_attribute(self, name: str, value: str) -> None:
        if name not in self._attributes:
            raise IndexError(f"blueprint {self.id!r} has no attribute {name!r}")
        self._attributes[name] = str(value)


class FakeBlueprintLibrary(_Fake):
    """Fake ``carla.BlueprintLibrary``: ``find`` returns a copy, ``filter`` matches ids with fnmatch."""

    carla_name = "BlueprintLibrary"

    def __init__(self, server: Any, blueprints: list[FakeActorBlueprint]) -> None:
        super().__init__(server)
        self._blueprints = blueprints

    def __iter__(self) -> Iterator[FakeActorBlueprint]:
        return iter(self._blueprints)

    def find(self, blueprint_id: str) -> FakeActorBlueprint:
        for bp in self._blueprints:
            if bp.id == blueprint_id:
                return bp._copy()
        raise IndexError(f"blueprint {blueprint_id!r} not found")

    def filter(self, pattern: str) -> FakeBlueprintLibrary:
        return FakeBlueprintLibrary(self._server, [bp for bp in self._blueprints if fnmatch.fnmatch(bp.id, pattern)])


# ---------------------------------------------------------------- actors
class FakeActor(_Fake):
    """Fake ``carla.Actor``: pose and speed on the server; attached actors take their parent's pose."""

    carla_name = "Actor"

    def __init__(self, server: Any, actor_id: int, blueprint: FakeActorBlueprint, transform: Any, parent: Any) -> None:
        super().__init__(server)
        self.id, self.type_id, self._parent = actor_id, blueprint.id, parent
        self._attributes = dict(blueprint._attributes)
        self._x, self._y, self._z = transform.location.x, transform.location.y, transform.location.z
        self._yaw_deg, self._speed = transform.rotation.yaw, 0.0

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self._attributes)

    def _pose(self) -> tuple[float, float, float, float]:
        if self._parent is not None:
            return self._parent._pose()
        return self._x, self._y, self._z, self._yaw_deg

    def get_transform(self) -> Any:
        self._server._check_alive(self, "get_transform")
        carla, (x, y, z, yaw) = self._server.carla, self._pose()
        return carla.Transform(carla.Location(x=x, y=y, z=z), carla.Rotation(yaw=yaw))

    def get_velocity(self) -> Any:
        self._server._check_alive(self, "get_velocity")
        yaw = math.radians(self._yaw_deg)
        return self._server.carla.Vector3D(x=self._speed * math.cos(yaw), y=self._speed * math.sin(yaw), z=0.0)


class FakeVehicle(FakeActor):
    """Fake ``carla.Vehicle``: a kinematic bicycle driven by the last ``apply_control``."""

    carla_name = "Vehicle"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._control: Any = None
        self._autopilot = False

    def apply_control(self, control: Any) -> None:
        self._server._check_alive(self, "apply_control")
        self._control = control

    def _advance(self, dt: float) -> None:
        """Kinematic bicycle step under the last control (NPCs on autopilot stand still)."""
        c = self._control
        if c is None:
            return
        accel = c.throttle * MAX_ACCEL_MPS2 - c.brake * MAX_BRAKE_MPS2
        self._speed = max(0.0, self._speed + accel * dt)
        yaw = math.radians(self._yaw_deg) + self._speed / WHEELBASE_M * math.tan(c.steer * MAX_STEER_RAD) * dt
        self._x += self._speed * math.cos(yaw) * dt
        self._y += self._speed * math.sin(yaw) * dt
        self._yaw_deg = math.degrees(yaw)


class FakeSensor(FakeActor):
    """Fake ``carla.Sensor``: the server calls the ``listen`` callback on every tick (cameras) or event."""

    carla_name = "Sensor"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._callback: Any = None

    def listen(self, callback: Any) -> None:
        self._server._check_alive(self, "listen")
        self._callback = callback

    def stop(self) -> None:
        self._callback = None


# ---------------------------------------------------------------- sensor data
class FakeImage(_Fake):
    """Fake ``carla.Image``: BGRA bytes plus size and frame id."""

    carla_name = "Image"

    def __init__(self, server: Any, frame: int, width: int, height: int, raw_data: bytes) -> None:
        super().__init__(server)
        self.frame, self.width, self.height, self.raw_data = frame, width, height, raw_data


class FakeLaneMarking(_Fake):
    """Fake ``carla.LaneMarking``: only its ``type``."""

    carla_name = "LaneMarking"

    def __init__(self, server: Any, marking_type: str) -> None:
        super().__init__(server)
        self.type = marking_type


class FakeCollisionEvent(_Fake):
    """Fake ``carla.CollisionEvent``."""

    carla_name = "CollisionEvent"

    def __init__(self, server: Any, frame: int, other_actor: Any, normal_impulse: Any) -> None:
        super().__init__(server)
        self.frame, self.other_actor, self.normal_impulse = frame, other_actor, normal_impulse


class FakeLaneInvasionEvent(_Fake):
    """Fake ``carla.LaneInvasionEvent``."""

    carla_name = "LaneInvasionEvent"

    def __init__(self, server: Any, frame: int, markings: list[FakeLaneMarking]) -> None:
        super().__init__(server)
        self.frame, self.crossed_lane_markings = frame, markings


class FakeTrafficManager(_ServerBound):
    """Fake ``carla.TrafficManager``: records synchronous mode and seed per port on the server."""

    carla_name = "TrafficManager"

    def __init__(self, server: Any, port: int) -> None:
        super().__init__(server)
        self._port = port

    def set_synchronous_mode(self, enabled: bool) -> None:
        self._server._maybe_fail("TrafficManager.set_synchronous_mode")
        self._server.tm_synchronous[self._port] = bool(enabled)

    def set_random_device_seed(self, seed: int) -> None:
        self._server.tm_seeds[self._port] = int(seed)

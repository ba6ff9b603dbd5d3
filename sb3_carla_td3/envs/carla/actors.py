"""Actor lifecycle of the CARLA env: batched spawn and destroy, and a sweep of actors a dead run left behind.

Every actor the env creates is spawned through ``client.apply_batch_sync`` and its id recorded in one
:class:`ActorLifecycle`; :meth:`ActorLifecycle.destroy_all` stops the sensors and destroys every recorded id
in one batch. The env calls it on reset, on close and on any exception, so no actor outlives its episode.
Actors carry a ``role_name`` starting with :data:`ROLE_PREFIX`, followed by the owner tag of the env connection
that spawned them (:mod:`sb3_carla_td3.envs.carla.sharing`); :func:`sweep_stale_actors` destroys those found on
connect (left by a crashed process) except the actors of another live env of this process on the same server.
This module gets ``carla`` passed in and never imports it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from sb3_carla_td3.envs.carla.sharing import REGISTRY, owner_of, role_with_owner

logger = logging.getLogger(__name__)

#: Prefix of the ``role_name`` attribute of every actor the env spawns.
ROLE_PREFIX = "sb3_carla_td3"
EGO_ROLE = f"{ROLE_PREFIX}_ego"
NPC_ROLE = f"{ROLE_PREFIX}_npc"
SENSOR_ROLE = f"{ROLE_PREFIX}_sensor"
#: Height in metres above the road at which vehicles are spawned (spawning at road level fails on collision).
SPAWN_LIFT_M = 0.5


class CarlaSpawnError(RuntimeError):
    """The server refused to spawn an actor the episode needs (e.g. the ego's spot is occupied)."""


def _set_role(blueprint: Any, role: str) -> Any:
    if blueprint.has_attribute("role_name"):
        blueprint.set_attribute("role_name", role)
    return blueprint


def four_wheeled_blueprints(library: Any) -> list[Any]:
    """Vehicle blueprints with four wheels (no bikes or motorbikes), for NPC traffic.

    :param library: a ``carla.BlueprintLibrary``.
    :return: the matching blueprints, in library order.
    """
    return [
        bp
        for bp in library.filter("vehicle.*")
        if bp.has_attribute("number_of_wheels") and bp.get_attribute("number_of_wheels").as_int() == 4
    ]


def spawn_transforms(carla: Any, world_map: Any, spacing_m: float = 20.0) -> list[Any]:
    """The map's spawn points, or (maps built from OpenDRIVE alone have none) driving-lane waypoints.

    :param carla: the ``carla`` module (for ``Transform``/``Location``).
    :param world_map: a ``carla.Map``.
    :param spacing_m: distance between generated waypoints in metres, used only when the map has no spawn points.
    :return: transforms lifted by :data:`SPAWN_LIFT_M`.
    """
    points = list(world_map.get_spawn_points())
    if not points:
        points = [
            wp.transform
            for wp in world_map.generate_waypoints(spacing_m)
            if wp.lane_type == carla.LaneType.Driving and not wp.is_junction
        ]
    lifted = []
    for t in points:
        location = carla.Location(x=t.location.x, y=t.location.y, z=t.location.z + SPAWN_LIFT_M)
        lifted.append(carla.Transform(location, carla.Rotation(yaw=t.rotation.yaw)))
    return lifted


class ActorLifecycle:
    """Spawns one episode's actors in batches, records every id, and destroys them all in one batch.

    :param carla: the ``carla`` module (for ``command`` and value types).
    :param client: a connected ``carla.Client``.
    :param world: its ``carla.World``.
    :param tm_port: Traffic Manager port NPCs are handed to.
    :param owner: the owner tag written after the role in every actor's ``role_name`` (None: no tag, so any
        connect's sweep destroys them).
    """

    def __init__(self, carla: Any, client: Any, world: Any, tm_port: int, owner: str | None = None) -> None:
        self._carla, self._client, self._world, self._tm_port = carla, client, world, tm_port
        self.owner = owner
        self.actor_ids: list[int] = []
        self._sensors: list[Any] = []

    def _spawn(self, commands: Sequence[Any]) -> tuple[list[int], list[str]]:
        """Apply spawn commands in one batch; return the new ids and the error messages."""
        ids, errors = [], []
        for response in self._client.apply_batch_sync(list(commands), False):
            if response.has_error():
                errors.append(response.error)
            else:
                ids.append(response.actor_id)
                self.actor_ids.append(response.actor_id)
        return ids, errors

    def _handle(self, actor_id: int) -> Any:
        actor = self._world.get_actor(actor_id)
        if actor is None:
            raise CarlaSpawnError(f"actor {actor_id} was spawned but the world does not list it")
        return actor

    def spawn_ego(self, blueprint_id: str, transform: Any) -> Any:
        """Spawn the ego vehicle.

        :param blueprint_id: vehicle blueprint id, e.g. ``vehicle.tesla.model3``.
        :param transform: spawn pose (already lifted above the road).
        :return: the ``carla.Vehicle``.
        :raises CarlaSpawnError: if the server refuses (occupied spot, unknown blueprint).
        """
        blueprint = _set_role(self._world.get_blueprint_library().find(blueprint_id), role_with_owner(EGO_ROLE, self.owner))
        ids, errors = self._spawn([self._carla.command.SpawnActor(blueprint, transform)])
        if not ids:
            loc = transform.location
            raise CarlaSpawnError(f"could not spawn the ego {blueprint_id!r} at ({loc.x:.1f}, {loc.y:.1f}): {errors}")
        return self._handle(ids[0])

    def spawn_sensors(self, parent_id: int, specs: Sequence[tuple[str, dict[str, str], Any, Callable[[Any], None]]]) -> None:
        """Spawn sensors attached to ``parent_id`` in one batch and start their callbacks.

        :param parent_id: actor id of the ego.
        :param specs: per sensor ``(blueprint id, attributes, relative transform, listen callback)``.
        :raises CarlaSpawnError: if any sensor fails to spawn.
        """
        commands = []
        for blueprint_id, attributes, transform, _ in specs:
            role = role_with_owner(SENSOR_ROLE, self.owner)
            blueprint = _set_role(self._world.get_blueprint_library().find(blueprint_id), role)
            for key, value in attributes.items():
                blueprint.set_attribute(key, value)
            commands.append(self._carla.command.SpawnActor(blueprint, transform, parent_id))
        ids, errors = self._spawn(commands)
        if errors:
            raise CarlaSpawnError(f"could not spawn the ego's sensors: {errors}")
        for actor_id, (*_, callback) in zip(ids, specs, strict=True):
            sensor = self._handle(actor_id)
            self._sensors.append(sensor)
            sensor.listen(callback)

    def spawn_npcs(self, blueprints: Sequence[Any], transforms: Sequence[Any]) -> int:
        """Spawn NPC vehicles on autopilot (Traffic Manager on ``tm_port``) in one batch.

        :param blueprints: one vehicle blueprint per NPC.
        :param transforms: one spawn pose per NPC.
        :return: how many spawned; the rest failed (occupied spots) and are logged, not raised.
        """
        command = self._carla.command
        role = role_with_owner(NPC_ROLE, self.owner)
        commands = [
            command.SpawnActor(_set_role(bp, role), t).then(command.SetAutopilot(command.FutureActor, True, self._tm_port))
            for bp, t in zip(blueprints, transforms, strict=True)
        ]
        ids, errors = self._spawn(commands)
        if errors:
            logger.info("%d of %d NPC vehicles failed to spawn: %s", len(errors), len(commands), errors[:3])
        return len(ids)

    def destroy_all(self) -> int:
        """Stop every sensor and destroy every recorded actor in one batch. Safe to call repeatedly.

        The records are cleared even if the server fails to answer; :func:`sweep_stale_actors` removes
        anything left over on the next connect.

        :return: the number of actors the server confirmed destroyed.
        """
        sensors, ids = self._sensors, self.actor_ids
        self._sensors, self.actor_ids = [], []
        for sensor in sensors:
            try:
                sensor.stop()
            except RuntimeError as e:
                logger.warning("could not stop sensor %s: %s", getattr(sensor, "id", "?"), e)
        if not ids:
            return 0
        # Sensors first: destroying a parent before its sensors leaves the sensors' streams dangling.
        sensor_ids = {sensor.id for sensor in sensors}
        ordered = [i for i in ids if i in sensor_ids] + [i for i in ids if i not in sensor_ids]
        responses = self._client.apply_batch_sync([self._carla.command.DestroyActor(i) for i in ordered], False)
        failed = [r.error for r in responses if r.has_error()]
        if failed:
            logger.warning("%d of %d actors could not be destroyed: %s", len(failed), len(ordered), failed[:3])
        return len(ordered) - len(failed)


def is_stale(role_name: str, is_live: Callable[[str], bool] = REGISTRY.is_live) -> bool:
    """Whether an actor with this ``role_name`` is a leftover that a connect must destroy.

    :param role_name: the actor's ``role_name`` attribute.
    :param is_live: whether an owner tag is a live env connection of this process (the registry's, by default).
    :return: True for this library's actors (:data:`ROLE_PREFIX`) without an owner tag or whose owner is not live:
        a crashed run, a dead or other process, an env that was not closed; False for anything else.
    """
    if not role_name.startswith(ROLE_PREFIX):
        return False
    owner = owner_of(role_name)
    return owner is None or not is_live(owner)


def sweep_stale_actors(carla: Any, client: Any, world: Any, is_live: Callable[[str], bool] = REGISTRY.is_live) -> int:
    """Destroy actors whose ``role_name`` marks them as spawned by this library and whose owner is gone.

    The actors of another live env of this process (phase 3's evaluation env next to the training env) are kept.

    :param carla: the ``carla`` module.
    :param client: a connected ``carla.Client``.
    :param world: its ``carla.World``.
    :param is_live: see :func:`is_stale`.
    :return: the number of actors destroyed.
    """
    stale = [a for a in world.get_actors() if is_stale(str(a.attributes.get("role_name", "")), is_live)]
    if not stale:
        return 0
    responses = client.apply_batch_sync([carla.command.DestroyActor(a.id) for a in stale], False)
    destroyed = sum(1 for r in responses if not r.has_error())
    logger.warning("destroyed %d actors left by an earlier sb3_carla_td3 run", destroyed)
    return destroyed


def yaw_degrees(dx: float, dy: float) -> float:
    """CARLA yaw (degrees, from +x towards +y) of the direction ``(dx, dy)``.

    :param dx: x component in metres.
    :param dy: y component in metres.
    :return: yaw in degrees, in (-180, 180].
    """
    return math.degrees(math.atan2(dy, dx))

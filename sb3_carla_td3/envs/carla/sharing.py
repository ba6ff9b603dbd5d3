"""Several :class:`~sb3_carla_td3.envs.carla.env.CarlaEnv` of one process on one CARLA server.

Phase 3 trains on one env and evaluates on a second one built from the same config, so both reach the same server.
Three things are therefore kept per process and per server (``host:port``) in :data:`REGISTRY`:

- **Owners.** Each connection of an env gets an owner tag (host name, pid and a random token), written into the
  ``role_name`` of every actor it spawns (:func:`role_with_owner`). The sweep on connect
  (:func:`~sb3_carla_td3.envs.carla.actors.sweep_stale_actors`) skips the actors of a live connection of this
  process and still destroys the rest: actors of a crashed run, of a dead or other process, of an env that was
  garbage-collected without ``close()``, and an env's own leftovers from an earlier connection.
- **World settings.** The first env to connect records the settings to put back (those it found); an env that joins
  while another is connected reuses that record instead of the synchronous mode it finds, and only the last env to
  leave restores them. The Traffic Manager on a port leaves synchronous mode only with the last env using that port.
- **One episode at a time.** An env that starts an episode interrupts the running episode of every other env on the
  server: the other env's actors are destroyed and its next ``step()`` is a truncation with reason
  ``"interrupted"``. Otherwise the paused env's ego would keep driving on its last control, and its NPCs would
  stay in the evaluation's traffic, while the other env ticks the world.

This module does not import ``carla``.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sb3_carla_td3.envs.carla.config import LOOPBACK_HOSTS

#: Separates a role from its owner tag in ``role_name`` (``sb3_carla_td3_ego/host:pid:token``).
OWNER_SEPARATOR = "/"


def server_key(host: str, port: int) -> str:
    """The registry's name of a server: ``host:port``, with every loopback name written ``localhost``.

    :param host: host name or IP the env connects to.
    :param port: RPC port.
    :return: the key.
    """
    return f"{'localhost' if host in LOOPBACK_HOSTS else host}:{port}"


def new_owner_tag() -> str:
    """A tag for one connection of one env: ``<host name>:<pid>:<8 hex digits>``.

    :return: the tag (not yet live: :meth:`ServerRegistry.join` makes it so).
    """
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def role_with_owner(role: str, owner: str | None) -> str:
    """The ``role_name`` of an actor: its role, then the owner tag when there is one.

    :param role: e.g. :data:`~sb3_carla_td3.envs.carla.actors.EGO_ROLE`.
    :param owner: the spawning connection's tag, or None (an untagged actor is swept by any connect).
    :return: ``role`` or ``role/owner``.
    """
    return role if owner is None else f"{role}{OWNER_SEPARATOR}{owner}"


def owner_of(role_name: str) -> str | None:
    """The owner tag in a ``role_name``, or None when it has none.

    :param role_name: an actor's ``role_name`` attribute.
    :return: the tag.
    """
    _, separator, owner = role_name.partition(OWNER_SEPARATOR)
    return owner if separator else None


@dataclass
class _Connection:
    """One live connection: its Traffic Manager port, step length and how to interrupt its episode."""

    tm_port: int
    fixed_delta_seconds: float
    interrupt: Callable[[], Callable[[], None] | None]  # a weak reference to the env's bound method


@dataclass
class _Server:
    """What the envs of this process share about one server."""

    original_settings: Any
    connections: dict[str, _Connection] = field(default_factory=dict)


class ServerRegistry:
    """The live connections of this process, per server (thread-safe; one instance, :data:`REGISTRY`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[str, _Server] = {}

    def _prune(self, key: str) -> _Server | None:
        """The server's entry without connections whose env was garbage-collected (None when none is left)."""
        server = self._servers.get(key)
        if server is None:
            return None
        for owner in [o for o, c in server.connections.items() if c.interrupt() is None]:
            del server.connections[owner]
        if not server.connections:
            del self._servers[key]
            return None
        return server

    def join(
        self,
        key: str,
        owner: str,
        found_settings: Callable[[], Any],
        tm_port: int,
        fixed_delta_seconds: float,
        interrupt: Callable[[], None],
    ) -> Any:
        """Register a connection and return the world settings to restore when the last connection leaves.

        :param key: :func:`server_key` of the server.
        :param owner: the connection's tag.
        :param found_settings: called only when no other connection of this process is live on the server: the
            settings this connection is to restore (those it found).
        :param tm_port: its Traffic Manager port.
        :param fixed_delta_seconds: its simulated seconds per tick.
        :param interrupt: a bound method that ends its running episode (held through a weak reference).
        :return: the settings to restore (shared by every connection to the server).
        :raises ValueError: if a live connection to the server ticks with another ``fixed_delta_seconds``.
        """
        with self._lock:
            server = self._prune(key)
            if server is None:
                server = self._servers[key] = _Server(found_settings())
            for other_owner, other in server.connections.items():
                if other.fixed_delta_seconds != fixed_delta_seconds:
                    raise ValueError(
                        f"fixed_delta_seconds={fixed_delta_seconds} differs from {other.fixed_delta_seconds} of the "
                        f"env {other_owner} of this process connected to the CARLA server {key}; envs sharing a server "
                        "must step it alike"
                    )
            server.connections[owner] = _Connection(tm_port, fixed_delta_seconds, weakref.WeakMethod(interrupt))
            return server.original_settings

    def leave(self, key: str, owner: str) -> None:
        """Forget a connection (no error when it is not registered).

        :param key: :func:`server_key` of the server.
        :param owner: the connection's tag.
        """
        with self._lock:
            server = self._servers.get(key)
            if server is not None:
                server.connections.pop(owner, None)
                self._prune(key)

    def others(self, key: str, owner: str | None) -> list[int]:
        """The Traffic Manager ports of the other live connections to a server.

        :param key: :func:`server_key` of the server.
        :param owner: the asking connection's tag (None: count every connection).
        :return: one port per other connection; empty when the asking one is alone (it restores the settings).
        """
        with self._lock:
            server = self._prune(key)
            if server is None:
                return []
            return [c.tm_port for o, c in server.connections.items() if o != owner]

    def is_live(self, owner: str) -> bool:
        """Whether a tag is a live connection of this process (a forked child does not own its parent's tags).

        :param owner: an owner tag read from an actor.
        :return: True if the sweep must keep that actor.
        """
        if owner.rsplit(":", 2)[1:2] != [str(os.getpid())]:
            return False
        with self._lock:
            return any(owner in server.connections and server.connections[owner].interrupt() is not None
                       for server in self._servers.values())  # fmt: skip

    def claim(self, key: str, owner: str) -> int:
        """Interrupt the running episodes of the other connections to a server (one episode at a time).

        :param key: :func:`server_key` of the server.
        :param owner: the connection about to start an episode.
        :return: how many other connections were told (each ignores it when it has no running episode).
        """
        with self._lock:
            server = self._prune(key)
            callbacks = [] if server is None else [c.interrupt() for o, c in server.connections.items() if o != owner]
        for callback in callbacks:  # outside the lock: an interrupt talks to the server
            if callback is not None:
                callback()
        return len(callbacks)


#: The registry of this process.
REGISTRY = ServerRegistry()

"""Connecting to a CARLA server safely: the lazy ``import carla`` guard and the subprocess port probe.

libcarla aborts the whole Python process (SIGABRT, uncatchable) when something that is not a CARLA server
answers on the RPC port. So before a ``carla.Client`` is created in this process, :func:`probe_carla_server`
checks the port with a plain TCP connect and then asks for the server version from a short-lived subprocess.
A refused, silent or foreign port raises :class:`~sb3_carla_td3.errors.CarlaConnectionError` within
``timeout_s + 1`` seconds, naming host and port and saying how to start a server.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from gymnasium.error import DependencyNotInstalled

from sb3_carla_td3.errors import CarlaConnectionError

#: How to install the optional CARLA client.
CARLA_INSTALL_HINT = 'pip install "sb3-carla-td3[carla]"'
#: Seconds kept aside for starting the probe subprocess (Python start-up plus ``import carla`` take ~0.2 s).
_PROBE_STARTUP_S = 0.4
#: Exit code of the probe script when the RPC call raised (time-out, refused, ...).
_PROBE_RPC_FAILED = 3

_PROBE_SCRIPT = """
import sys
import carla
client = carla.Client(sys.argv[1], int(sys.argv[2]))
client.set_timeout(float(sys.argv[3]))
try:
    print(client.get_server_version())
    print(client.get_client_version())
except RuntimeError as e:
    print(e)
    sys.exit(3)
"""


class CarlaNotInstalledError(DependencyNotInstalled, ImportError):
    """The optional ``carla`` client package is missing (catchable as ``ImportError`` too)."""


def import_carla() -> ModuleType:
    """Import the ``carla`` client package on first use.

    :return: the ``carla`` module.
    :raises CarlaNotInstalledError: with the install command, chained to the original ``ImportError``.
    """
    try:
        import carla
    except ImportError as e:
        raise CarlaNotInstalledError(
            f"CarlaEnv needs the CARLA 0.9.16 Python client, which is not installed ({e}). Install it with "
            f"`{CARLA_INSTALL_HINT}` (wheels exist for CPython 3.10-3.12 on x86-64 Linux and Windows)."
        ) from e
    return carla


def server_start_hint(port: int) -> str:
    """One sentence telling how to start a CARLA server on ``port``.

    :param port: the RPC port.
    :return: the hint.
    """
    return (
        f"Start a CARLA 0.9.16 server with `CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}` "
        f"(it also uses ports {port + 1} and {port + 2}), or set host/port in the env config."
    )


def interpret_probe_result(host: str, port: int, returncode: int, output: str, timeout_s: float) -> tuple[str, str]:
    """Turn the probe subprocess's exit status into versions or an error.

    :param host: probed host.
    :param port: probed port.
    :param returncode: the subprocess's exit status (negative: killed by that signal).
    :param output: its stdout and stderr.
    :param timeout_s: the probe's time budget in seconds (for the message).
    :return: ``(server_version, client_version)``.
    :raises CarlaConnectionError: for any status other than success.
    """
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if returncode == 0 and len(lines) >= 2:
        return lines[0], lines[1]
    if returncode == _PROBE_RPC_FAILED:
        detail = lines[0] if lines else "no message"
        raise CarlaConnectionError(
            f"The CARLA server at {host}:{port} did not answer within {timeout_s:.1f} s ({detail}). {server_start_hint(port)}"
        )
    if returncode < 0 or returncode == 128 + signal.SIGABRT:
        number = -returncode if returncode < 0 else returncode - 128
        raise CarlaConnectionError(
            f"The service at {host}:{port} is not a CARLA server: the CARLA client aborted on its reply (signal "
            f"{number}). Check host and port. {server_start_hint(port)}"
        )
    tail = " | ".join(lines[-3:]) if lines else "no output"
    raise CarlaConnectionError(f"Probing the CARLA server at {host}:{port} failed (exit status {returncode}: {tail}).")


def probe_carla_server(host: str, port: int, timeout_s: float) -> tuple[str, str]:
    """Check that a CARLA server answers at ``host:port`` without risking this process.

    First a plain TCP connect (a refused port fails at once), then ``get_server_version`` from a subprocess, so
    that a foreign service aborting libcarla only kills the subprocess. The whole check takes at most about
    ``timeout_s + 1`` seconds.

    :param host: server host name or IP.
    :param port: RPC port, 1 to 65535.
    :param timeout_s: time budget in seconds, > 0.
    :return: ``(server_version, client_version)``; a mismatch is warned about, not raised.
    :raises CarlaConnectionError: if the port is closed, silent, or answered by something else.
    """
    deadline = time.monotonic() + timeout_s
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except ConnectionRefusedError as e:
        raise CarlaConnectionError(f"No CARLA server at {host}:{port}: connection refused. {server_start_hint(port)}") from e
    except TimeoutError as e:
        raise CarlaConnectionError(
            f"No CARLA server at {host}:{port}: no TCP connection within {timeout_s:.1f} s. {server_start_hint(port)}"
        ) from e
    except OSError as e:
        raise CarlaConnectionError(f"Cannot reach {host}:{port}: {e}. {server_start_hint(port)}") from e
    rpc_timeout_s = max(deadline - time.monotonic() - _PROBE_STARTUP_S, 0.1)
    command = [sys.executable, "-c", _PROBE_SCRIPT, host, str(port), f"{rpc_timeout_s:.3f}"]
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=rpc_timeout_s + _PROBE_STARTUP_S + 0.5, check=False
        )
    except subprocess.TimeoutExpired as e:  # run() has already killed the child
        raise CarlaConnectionError(
            f"The CARLA server at {host}:{port} did not answer within {timeout_s:.1f} s. {server_start_hint(port)}"
        ) from e
    server_version, client_version = interpret_probe_result(
        host, port, result.returncode, result.stdout + result.stderr, timeout_s
    )
    if server_version != client_version:
        warnings.warn(
            f"CARLA server {host}:{port} runs version {server_version} but the client is {client_version}; "
            "use matching versions.",
            stacklevel=2,
        )
    return server_version, client_version


def connect_client(carla: ModuleType, host: str, port: int, timeout_s: float) -> Any:
    """Probe ``host:port`` (see :func:`probe_carla_server`), then create a ``carla.Client`` in this process.

    :param carla: the ``carla`` module.
    :param host: server host name or IP.
    :param port: RPC port.
    :param timeout_s: probe budget and client RPC timeout in seconds, > 0.
    :return: a connected ``carla.Client``.
    :raises CarlaConnectionError: if no CARLA server answers.
    """
    probe_carla_server(host, port, timeout_s)
    client = carla.Client(host, port)
    client.set_timeout(timeout_s)
    return client


@dataclass(frozen=True)
class CarlaBackend:
    """Where :class:`~sb3_carla_td3.envs.carla.env.CarlaEnv` gets ``carla`` from and how it connects.

    The default is the real package and :func:`connect_client`; tests pass the fake server of
    :mod:`sb3_carla_td3.envs.carla.fake` so that the env's own lifecycle code runs without a server.

    :param carla: the ``carla`` module, or an object with the same names.
    :param connect: ``connect(host, port, timeout_s)`` returning a client.
    """

    carla: Any
    connect: Callable[[str, int, float], Any]

    @classmethod
    def default(cls) -> CarlaBackend:
        """The real ``carla`` package with the safe connect.

        :return: the backend.
        :raises CarlaNotInstalledError: if ``carla`` is not installed.
        """
        carla = import_carla()
        return cls(carla=carla, connect=lambda host, port, timeout_s: connect_client(carla, host, port, timeout_s))

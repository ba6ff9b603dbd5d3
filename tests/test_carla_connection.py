"""Connecting safely: closed-port error within the time bound, probe results, and the ``import carla`` guard.

Only closed loopback ports are probed here: a real ``carla.Client`` is never pointed at anything else.
"""

from __future__ import annotations

import signal
import socket
import sys
import time

import pytest

from sb3_carla_td3.envs.carla.config import CarlaConfig
from sb3_carla_td3.envs.carla.connection import (
    CARLA_INSTALL_HINT,
    CarlaNotInstalledError,
    import_carla,
    interpret_probe_result,
    probe_carla_server,
)
from sb3_carla_td3.errors import CarlaConnectionError

HOST = "127.0.0.1"


def closed_loopback_port() -> int:
    """A loopback port nothing listens on (bound to get a free number, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def test_probe_of_a_closed_port_raises_with_host_port_and_server_command() -> None:
    port = closed_loopback_port()
    with pytest.raises(CarlaConnectionError) as info:
        probe_carla_server(HOST, port, timeout_s=1.0)
    message = str(info.value)
    assert f"{HOST}:{port}" in message
    assert f"CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}" in message


def test_env_on_a_closed_port_raises_connection_error_within_timeout_plus_one_second() -> None:
    pytest.importorskip("carla")
    from sb3_carla_td3.envs.carla.env import CarlaEnv

    config = CarlaConfig(host=HOST, port=closed_loopback_port(), timeout_s=2.0)
    start = time.monotonic()
    with pytest.raises(CarlaConnectionError, match=f"{HOST}:{config.port}"):
        CarlaEnv(config)
    assert time.monotonic() - start < config.timeout_s + 1.0


@pytest.mark.parametrize("returncode", [-signal.SIGABRT, 128 + signal.SIGABRT])
def test_probe_killed_by_a_foreign_service_reports_not_a_carla_server(returncode: int) -> None:
    with pytest.raises(CarlaConnectionError, match="is not a CARLA server") as info:
        interpret_probe_result(HOST, 2000, returncode, "terminate called after throwing ... bad_cast", 5.0)
    assert "CarlaUE4.sh -RenderOffScreen -carla-rpc-port=2000" in str(info.value)


def test_probe_rpc_timeout_reports_no_answer_within_the_budget() -> None:
    output = "time-out of 4600ms while waiting for the simulator, make sure the simulator is ready and connected"
    with pytest.raises(CarlaConnectionError, match=r"did not answer within 5\.0 s \(time-out of 4600ms"):
        interpret_probe_result(HOST, 2000, 3, output, 5.0)


def test_probe_other_failure_quotes_the_output() -> None:
    with pytest.raises(CarlaConnectionError, match=r"exit status 1: .*ModuleNotFoundError"):
        interpret_probe_result(HOST, 2000, 1, "Traceback ...\nModuleNotFoundError: No module named 'carla'", 5.0)


def test_probe_success_returns_server_and_client_versions() -> None:
    assert interpret_probe_result(HOST, 2000, 0, "0.9.16\n0.9.16\n", 5.0) == ("0.9.16", "0.9.16")


def test_missing_carla_raises_import_error_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "carla", None)  # makes `import carla` raise ImportError
    with pytest.raises(ImportError, match="sb3-carla-td3\\[carla\\]") as info:
        import_carla()
    assert isinstance(info.value, CarlaNotInstalledError)
    assert isinstance(info.value.__cause__, ImportError)
    assert CARLA_INSTALL_HINT in str(info.value)

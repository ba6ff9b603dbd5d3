"""CarlaServerSupervisor and CarlaEnv(server_command=...): start, wait for the port, restart, stop, log to a file.

The "server" is tests/data/tcp_listener.py, which only listens on a loopback port: nothing but plain TCP connects
is pointed at it (the env runs on the fake backend here, so no ``carla.Client`` is ever created).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sb3_carla_td3.envs.carla.config import CarlaConfig
from sb3_carla_td3.envs.carla.server import CarlaServerSupervisor, _port_answers
from sb3_carla_td3.errors import CarlaConnectionError, ConfigError

LISTENER = Path(__file__).parent / "data" / "tcp_listener.py"
COMMAND = f"{sys.executable} {LISTENER} {{port}}"
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_until_gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def kill_server(server: CarlaServerSupervisor) -> int:
    """SIGKILL the server process, as a crash would, and wait until it is dead (a kill is asynchronous)."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while server.running and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not server.running
    return pid


@pytest.fixture
def supervisor(tmp_path: Path) -> Any:
    server = CarlaServerSupervisor(COMMAND, free_port(), tmp_path / "logs" / "server.log", start_timeout_s=10.0)
    yield server
    server.stop()


def test_start_waits_for_the_port_and_logs_to_a_file_not_the_console(
    supervisor: CarlaServerSupervisor, capfd: pytest.CaptureFixture[str]
) -> None:
    supervisor.start()
    assert supervisor.running and _port_answers(HOST, supervisor.port)
    supervisor.start()  # already running: nothing happens
    time.sleep(0.2)
    assert f"listening on {supervisor.port}" in supervisor.log_path.read_text()
    assert "listening" not in capfd.readouterr().out


def test_a_crashed_server_is_restarted_and_stop_ends_it(supervisor: CarlaServerSupervisor) -> None:
    supervisor.start()
    first_pid = kill_server(supervisor)
    assert supervisor.ensure_running() is True
    assert supervisor.restarts == 1 and supervisor.pid != first_pid and _port_answers(HOST, supervisor.port)
    assert supervisor.ensure_running() is False
    pid = supervisor.pid
    supervisor.stop()
    supervisor.stop()  # idempotent
    assert not supervisor.running and pid is not None and wait_until_gone(pid)
    assert not _port_answers(HOST, supervisor.port)


def test_a_command_that_exits_raises_with_its_exit_code_and_log(tmp_path: Path) -> None:
    command = f"{sys.executable} -c \"print('no GPU found'); raise SystemExit(4)\" {{port}}"
    server = CarlaServerSupervisor(command, free_port(), tmp_path / "server.log", start_timeout_s=10.0)
    with pytest.raises(CarlaConnectionError, match=r"exited with code 4 .*\n(.|\n)*no GPU found"):
        server.start()
    assert not server.running


def test_a_server_that_never_opens_its_port_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    command = f"{sys.executable} {LISTENER} {{port}} 30"  # opens the port only after 30 s
    server = CarlaServerSupervisor(command, free_port(), tmp_path / "server.log", start_timeout_s=0.5)
    with pytest.raises(CarlaConnectionError, match=r"did not open port \d+ within 0 s \(stopped it\)"):
        server.start()
    assert not server.running


def test_command_without_port_placeholder_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must contain '\{port\}'"):
        CarlaServerSupervisor("CarlaUE4.sh -RenderOffScreen", 2000, tmp_path / "log")


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"server_command": "CarlaUE4.sh -RenderOffScreen"}, r"server_command must contain '\{port\}'"),
        ({"server_command": COMMAND, "host": "10.0.0.5"}, r"host must be one of .*got host='10.0.0.5'"),
        ({"server_start_timeout_s": 0}, "server_start_timeout_s"),
        ({"server_log_dir": ""}, "server_log_dir"),
    ],
)
def test_server_config_errors_name_the_key_and_value(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        CarlaConfig(**kwargs)


def test_env_starts_restarts_and_stops_its_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("carla")
    from sb3_carla_td3.envs.carla import env as carla_env_module
    from sb3_carla_td3.envs.carla.env import CarlaEnv
    from sb3_carla_td3.envs.carla.fake import FakeCarlaServer

    fake = FakeCarlaServer((Path(__file__).parent / "data" / "mini_town.xodr").read_text())
    port = free_port()
    config = CarlaConfig(
        host=HOST,
        port=port,
        tm_port=port + 10 if port + 10 <= 65535 else port - 10,
        town="mini_town",
        npc_vehicles=0,
        settle_ticks=1,
        timeout_s=0.5,
        reconnect_delay_s=0.0,
        server_command=COMMAND,
        server_log_dir=str(tmp_path / "logs"),
    )
    env = CarlaEnv(config, backend=fake.backend)
    assert env.server is not None and env.server.running
    assert (tmp_path / "logs" / f"carla_server_{port}.log").exists()
    env.reset()
    first_pid = kill_server(env.server)  # the server process crashes...
    fake.kill()  # ...and with it the simulation
    assert env.step(np.array([0.0, 0.5]))[4]["reason"] == "server_lost"
    fake.restart()
    env.reset()  # restarts the process, reconnects
    assert env.server.restarts == 1 and env.server.pid not in (None, first_pid)
    # A hung server: its process runs but the simulation does not answer. The first reset attempt fails, the
    # second restarts the process (the simulation is back by then).
    fake.kill()
    assert env.step(np.array([0.0, 0.5]))[4]["reason"] == "server_lost"
    monkeypatch.setattr(carla_env_module, "_sleep", lambda seconds: fake.restart())
    hung_pid = env.server.pid
    _, info = env.reset()
    assert info["reset_attempts"] == 2 and env.server.restarts == 2 and env.server.pid != hung_pid
    pid = env.server.pid
    env.close()
    assert not env.server.running and pid is not None and wait_until_gone(pid)

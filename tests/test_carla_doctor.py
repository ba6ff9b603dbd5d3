"""``sb3-carla-td3 doctor``: every check on the fake server, each injected failure on its own FAIL line, and a closed
port or a foreign TCP service giving a clean non-zero exit within the time-out (the CLI in a subprocess).

A real ``carla.Client`` is only ever created in the probe subprocess, and only against loopback ports.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("carla")

from sb3_carla_td3 import cli
from sb3_carla_td3.envs.carla import doctor as doctor_module
from sb3_carla_td3.envs.carla.config import CarlaConfig
from sb3_carla_td3.envs.carla.connection import CarlaBackend
from sb3_carla_td3.envs.carla.doctor import CheckResult, run_doctor
from sb3_carla_td3.envs.carla.fake import FakeCarlaServer

XODR = (Path(__file__).parent / "data" / "mini_town.xodr").read_text()
HOST = "127.0.0.1"
ALL_CHECKS = ["port", "versions", "traffic_manager_port", "settings", "map", "spawn", "frames", "tick_rate", "route",
              "cleanup"]  # fmt: skip


def free_port() -> int:
    """A loopback port nothing listens on (bound to get a free number, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server() -> FakeCarlaServer:
    return FakeCarlaServer(XODR)


def config(**overrides: Any) -> CarlaConfig:
    fields = {"town": "mini_town", "timeout_s": 0.3, "tm_port": free_port(),
              "route": {"start_xy": [-48.0, 1.75], "end_xy": [-18.0, 1.75]}}  # fmt: skip
    return CarlaConfig.from_dict({**fields, **overrides})


def doctor(server: FakeCarlaServer, **kwargs: Any) -> list[CheckResult]:
    return run_doctor(kwargs.pop("cfg", None) or config(), backend=server.backend, probe=server.probe, **kwargs)


def failed(results: list[CheckResult]) -> list[str]:
    return [r.name for r in results if not r.passed]


def line(results: list[CheckResult], name: str) -> str:
    return next(r.line() for r in results if r.name == name)


def test_every_check_passes_on_a_healthy_server_and_leaves_nothing_behind(server: FakeCarlaServer) -> None:
    printed: list[str] = []
    results = doctor(server, ticks=5, report=lambda r: printed.append(r.line()))
    assert [r.name for r in results] == ALL_CHECKS and failed(results) == []
    assert printed == [r.line() for r in results] and all(p.startswith("PASS ") for p in printed)
    assert "5 of 5 ticks delivered the camera image of their own frame" in line(results, "frames")
    assert "frames/s" in line(results, "tick_rate") and "120K frames take" in line(results, "tick_rate")
    assert "4 actors destroyed, 0 remain; asynchronous mode" in line(results, "cleanup")  # ego + 3 sensors
    assert server.actors == {} and not server.settings.synchronous_mode


def test_a_mismatched_server_version_fails_only_the_versions_line(server: FakeCarlaServer) -> None:
    server.server_version = "0.9.15"
    results = doctor(server, ticks=2)
    assert failed(results) == ["versions"]
    assert line(results, "versions") == (
        "FAIL versions: server 0.9.15, client 0.9.16 Fix: install the client of the server's version "
        '(pip install "carla==0.9.15") or run a CARLA 0.9.16 server; mismatched versions fail in the middle of a run'
    )


def test_a_camera_that_drops_every_frame_fails_the_frame_check_and_stops_early(server: FakeCarlaServer) -> None:
    server.drop_camera_frames(10**6)
    started = time.monotonic()
    results = doctor(server, ticks=50)
    assert failed(results) == ["frames", "tick_rate"]  # the rate has nothing to measure
    assert "0 of 3 ticks delivered" in line(results, "frames") and "-RenderOffScreen" in line(results, "frames")
    assert time.monotonic() - started < 3 * 0.3 + 2.0  # 3 lost frames of 0.3 s, not 50
    assert server.actors == {} and not server.settings.synchronous_mode


def test_a_leftover_synchronous_mode_fails_the_settings_line_and_is_undone(server: FakeCarlaServer) -> None:
    server.settings.synchronous_mode, server.settings.fixed_delta_seconds = True, 0.1  # a crashed client's
    results = doctor(server, ticks=2)
    assert failed(results) == ["settings"]
    assert "synchronous mode (fixed_delta_seconds=0.1" in line(results, "settings")
    assert not server.settings.synchronous_mode and server.settings.fixed_delta_seconds is None
    assert failed(doctor(server, ticks=2)) == []  # the next run passes


def test_a_traffic_manager_port_clash_fails_its_own_line(server: FakeCarlaServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:  # another run's Traffic Manager
        holder.bind((HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        results = doctor(server, cfg=config(tm_port=port), ticks=2)
    assert failed(results) == ["traffic_manager_port"]
    assert f"Traffic Manager port {port} is in use on this machine" in line(results, "traffic_manager_port")
    assert "env.tm_port" in line(results, "traffic_manager_port")


def test_a_requested_town_is_loaded_and_reported(server: FakeCarlaServer) -> None:
    results = doctor(server, town="Town02", ticks=2)
    assert server.loaded_worlds == ["Town02"] and "loaded Town02" in line(results, "map")


def test_a_slow_server_fails_the_tick_rate_bar() -> None:
    slow = FakeCarlaServer(XODR, sensor_delay_s=0.05)  # every image arrives 50 ms after its tick: < 20 frames/s
    results = run_doctor(config(), ticks=3, min_fps=50.0, backend=slow.backend, probe=slow.probe)
    assert failed(results) == ["tick_rate"] and "(bar: >= 50 frames/s)" in line(results, "tick_rate")


def test_a_server_failing_mid_check_is_reported_and_cleaned_up(server: FakeCarlaServer) -> None:
    server.fail_call("World.tick")
    results = doctor(server, ticks=3)
    assert failed(results) == ["frames"] and "stopped answering (RuntimeError: time-out" in line(results, "frames")
    assert [r.name for r in results][-1] == "cleanup" and server.actors == {}


def test_a_dead_server_stops_after_the_port_line(server: FakeCarlaServer) -> None:
    server.kill()
    results = doctor(server)
    assert [r.line()[:9] for r in results] == ["FAIL port"] and "connection refused" in results[0].detail


def test_ticks_must_be_positive(server: FakeCarlaServer) -> None:
    with pytest.raises(ValueError, match="ticks must be an integer >= 1, got 0"):
        doctor(server, ticks=0)


@pytest.fixture
def foreign_service() -> Iterator[int]:
    """A TCP service on a loopback port that answers every connection with HTTP, not CARLA's RPC."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((HOST, 0))
    listener.listen()
    listener.settimeout(0.2)
    stop, connections = threading.Event(), []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            connections.append(connection)
            connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 64)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for connection in connections:
        connection.close()
    listener.close()


def test_a_foreign_service_fails_the_port_check_within_the_time_out(foreign_service: int) -> None:
    started = time.monotonic()
    results = run_doctor(CarlaConfig(host=HOST, port=foreign_service, timeout_s=2.0))  # the real subprocess probe
    assert time.monotonic() - started < 2.0 + 1.5
    assert failed(results) == ["port"] and len(results) == 1 and f"{HOST}:{foreign_service}" in results[0].detail


def run_cli(port: int, timeout_s: float) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sb3_carla_td3", "doctor", "--host", HOST, "--port", str(port),
               "--timeout", str(timeout_s)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("service", ["closed", "foreign"])
def test_cli_exits_1_naming_host_and_port_without_a_traceback(service: str, request: pytest.FixtureRequest) -> None:
    port = free_port() if service == "closed" else request.getfixturevalue("foreign_service")
    result = run_cli(port, 2.0)
    assert result.returncode == 1, result.stdout + result.stderr  # not a signal: the CLI process never aborted
    assert "FAIL port: " in result.stdout and f"{HOST}:{port}" in result.stdout.splitlines()[1]
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("0 of 1 checks passed (failed: port)")


@pytest.mark.parametrize(("version", "status"), [("0.9.16", 0), ("0.9.15", 1)])
def test_cli_exit_status_is_0_only_when_every_check_passes(
    version: str, status: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fake = FakeCarlaServer(XODR)
    fake.server_version = version
    monkeypatch.setattr(CarlaBackend, "default", classmethod(lambda cls: fake.backend))
    monkeypatch.setattr(doctor_module, "probe_carla_server", fake.probe)
    run_config = tmp_path / "carla.yaml"
    run_config.write_text(
        "env:\n  name: carla\n  town: mini_town\n  route: {start_xy: [-48.0, 1.75], end_xy: [-18.0, 1.75]}\n"
    )
    argv = ["doctor", "--config", str(run_config), "--timeout", "0.3", "--tm-port", str(free_port()), "--ticks", "2"]
    assert cli.main(argv) == status
    out = capsys.readouterr().out
    assert out.count("PASS ") + out.count("FAIL ") == len(ALL_CHECKS)
    assert ("FAIL versions" in out) == (status == 1)

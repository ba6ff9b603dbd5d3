"""Run a CARLA server for one env: start it, wait for its port, restart it after a crash, stop it on close.

:class:`CarlaServerSupervisor` is used by :class:`~sb3_carla_td3.envs.carla.env.CarlaEnv` when
``config.server_command`` is set (e.g. ``CarlaUE4.sh -RenderOffScreen -carla-rpc-port={port}``). The server's
output goes to a log file, never to the training console. Only a plain TCP connect checks the port: no
``carla.Client`` is created here.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from sb3_carla_td3.errors import CarlaConnectionError

logger = logging.getLogger(__name__)
#: Characters of the server log quoted in an error.
_LOG_TAIL_CHARS = 1500


class CarlaServerSupervisor:
    """One CARLA server process on ``port``, started in its own process group so that stopping it also stops the
    UE4 binary that ``CarlaUE4.sh`` launches.

    :param command: the server command line; ``{port}`` is replaced by ``port``.
    :param port: the server's RPC port (it also uses port + 1 and port + 2).
    :param log_path: file the server's stdout and stderr are appended to.
    :param host: where the port is checked (a loopback address).
    :param start_timeout_s: longest wait for the port to answer after a start, in seconds, > 0.
    :param stop_timeout_s: wait after SIGTERM before SIGKILL, in seconds, >= 0.
    """

    def __init__(
        self,
        command: str,
        port: int,
        log_path: str | Path,
        host: str = "127.0.0.1",
        start_timeout_s: float = 120.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        if "{port}" not in command:
            raise ValueError(f"server_command must contain '{{port}}' (the RPC port to start on), got {command!r}")
        if not start_timeout_s > 0 or not stop_timeout_s >= 0:
            raise ValueError(
                f"start_timeout_s must be > 0 and stop_timeout_s >= 0, got {start_timeout_s!r} and {stop_timeout_s!r}"
            )
        self.argv = shlex.split(command.replace("{port}", str(port)))
        self.port, self.host = port, host
        self.log_path = Path(log_path)
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        #: Times the server was started again after it died or hung.
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """Process id of the running server (None when stopped)."""
        return self._process.pid if self.running and self._process is not None else None

    def start(self) -> None:
        """Start the server unless it runs, and wait until its port accepts TCP connections.

        :raises CarlaConnectionError: if the command cannot run, exits, or its port stays closed for
            ``start_timeout_s`` (the process is stopped then); the message quotes the end of the log.
        """
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open("ab")
        self._log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {shlex.join(self.argv)}\n".encode())
        self._log.flush()
        try:
            self._process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as e:
            self._close_log()
            raise CarlaConnectionError(f"could not run the CARLA server command {shlex.join(self.argv)!r}: {e}") from e
        logger.info("started CARLA server pid %d on port %d (log: %s)", self._process.pid, self.port, self.log_path)
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            code = self._process.poll()
            if code is not None:
                self._process = None
                self._close_log()
                raise CarlaConnectionError(
                    f"the CARLA server command exited with code {code} before port {self.port} answered; end of "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            if _port_answers(self.host, self.port):
                return
            time.sleep(0.2)
        self.stop()
        raise CarlaConnectionError(
            f"the CARLA server started with {shlex.join(self.argv)!r} did not open port {self.port} within "
            f"{self.start_timeout_s:.0f} s (stopped it); end of {self.log_path}:\n{self.log_tail()}"
        )

    def ensure_running(self) -> bool:
        """Start the server again if its process died.

        :return: True if it had to be restarted.
        :raises CarlaConnectionError: if it cannot be started (see :meth:`start`).
        """
        if self.running:
            return False
        code = None if self._process is None else self._process.poll()
        logger.warning("CARLA server on port %d is not running (exit code %s); restarting it", self.port, code)
        self._process = None
        self.restarts += 1
        self.start()
        return True

    def restart(self, reason: str) -> None:
        """Stop the server (even if it still runs, e.g. hung) and start it again.

        :param reason: why, for the log.
        :raises CarlaConnectionError: if it cannot be started (see :meth:`start`).
        """
        logger.warning("restarting the CARLA server on port %d: %s", self.port, reason)
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after ``stop_timeout_s``. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, self.stop_timeout_s), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
            logger.info("stopped CARLA server pid %d on port %d", process.pid, self.port)
        self._close_log()

    def log_tail(self) -> str:
        """The last characters of the server log ("" if there is none)."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-_LOG_TAIL_CHARS:].decode(errors="replace")

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def _port_answers(host: str, port: int) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds within 1 s."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False

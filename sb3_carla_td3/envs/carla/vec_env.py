"""Several CARLA servers, one env each, in a ``SubprocVecEnv`` that survives crashed workers.

A worker process that segfaults in libcarla (or hangs) would end the whole learner with ``EOFError`` in a plain
``SubprocVecEnv`` (SB3 issue 1890). :class:`RestartingSubprocVecEnv` restarts such a worker, reports its env's
episode as truncated (``info["reason"] == "worker_restarted"``) and raises only when workers fail more than
``max_restarts`` times within ``restart_window_s``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing as mp
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper, VecEnvObs, VecEnvStepReturn
from stable_baselines3.common.vec_env.subproc_vec_env import _stack_obs, _worker

from sb3_carla_td3.envs.carla.config import SERVER_PORT_SPAN, CarlaConfig, server_ports
from sb3_carla_td3.envs.carla.sensors import repeat_newest_frame

logger = logging.getLogger(__name__)

#: A server entry: a bare RPC port (on ``config.host``) or a ``"host:port"`` string.
Endpoint = int | str


def parse_endpoint(endpoint: Endpoint, default_host: str) -> tuple[str, int]:
    """Split a server entry into host and RPC port.

    :param endpoint: an RPC port (int, on ``default_host``) or ``"host:port"`` (``"[::1]:2000"`` for IPv6).
    :param default_host: host of a bare port.
    :return: ``(host, port)``.
    :raises ValueError: naming the entry if it is not an integer port or a ``host:port`` string, or the port is
        outside [1, 65533] (the server also needs port + 1 and port + 2).
    """
    high = 65535 - SERVER_PORT_SPAN + 1
    if isinstance(endpoint, str) and ":" in endpoint:
        host, _, port_text = endpoint.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host or not port_text.isdigit():
            raise ValueError(f"server endpoint {endpoint!r} must look like 'host:port', e.g. 'gpu-box-1:2000'")
        port: object = int(port_text)
    else:
        host, port = default_host, endpoint
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= high:
        raise ValueError(
            f"ports must hold integers in [1, {high}] or 'host:port' strings (a server also uses port + 1 and port + 2), "
            f"got {endpoint!r}"
        )
    return host, port


def check_port_spacing(endpoints: list[tuple[str, int]], tm_ports: list[int]) -> None:
    """Check that servers on one host do not share ports and that no Traffic Manager port hits a server port.

    A CARLA server with RPC port N also uses N + 1 (streaming) and N + 2 (secondary servers), so servers on one
    host must be at least 3 ports apart.

    :param endpoints: ``(host, RPC port)`` of each server.
    :param tm_ports: Traffic Manager port of each env.
    :raises ValueError: naming the two servers and the ports they share, or the colliding Traffic Manager ports.
    """
    by_host: dict[str, list[int]] = {}
    for host, port in endpoints:
        by_host.setdefault(host, []).append(port)
    for host, host_ports in by_host.items():
        used = sorted(host_ports)
        for a, b in itertools.pairwise(used):
            if b - a < SERVER_PORT_SPAN:
                shared = sorted(set(server_ports(a)) & set(server_ports(b)))
                suggestion = [used[0] + SERVER_PORT_SPAN * i for i in range(len(used))]
                raise ValueError(
                    f"CARLA servers on {host} at ports {a} and {b} would share port(s) {shared}: a server uses its RPC "
                    f"port N, N + 1 (streaming) and N + 2 (secondary servers), so {a} uses "
                    f"{', '.join(map(str, server_ports(a)))}. Ports on one host must differ by at least "
                    f"{SERVER_PORT_SPAN}, e.g. {suggestion}"
                )
    taken = {p: (host, port) for host, port in endpoints for p in server_ports(port)}
    clash = sorted(p for p in set(tm_ports) if p in taken)
    if clash:
        owners = ", ".join(f"{p} (server {taken[p][0]}:{taken[p][1]})" for p in clash)
        raise ValueError(
            f"Traffic Manager ports {tm_ports} (tm_port + i) collide with server ports {owners}; a server with RPC "
            "port N uses N, N + 1 and N + 2; change tm_port"
        )


def carla_env_configs(ports: Sequence[Endpoint], config: CarlaConfig | None = None) -> list[CarlaConfig]:
    """One config per server: ``host``/``port`` from ``ports``, ``tm_port`` = ``config.tm_port + i``, ``seed`` + i.

    :param ports: each server's RPC port (on ``config.host``) or ``"host:port"`` endpoint, e.g. ``[2000, 2003]``
        or ``["gpu-1:2000", "gpu-1:2003", "gpu-2:2000"]``. A server uses its port N, N + 1 and N + 2, so servers
        on one host must be at least 3 ports apart.
    :param config: settings shared by all envs; None uses ``CarlaConfig()``.
    :return: one validated config per entry, in order.
    :raises ValueError: if ``ports`` is empty, holds something that is neither an integer port nor a ``host:port``
        string, two servers on one host share ports, or a Traffic Manager port collides with a server port.
    """
    config = config if config is not None else CarlaConfig()
    if not isinstance(ports, (list, tuple)) or not ports:
        raise ValueError(f"ports must be a non-empty list of CARLA RPC ports or 'host:port' endpoints, got {ports!r}")
    endpoints = [parse_endpoint(entry, config.host) for entry in ports]
    tm_ports = [config.tm_port + i for i in range(len(ports))]
    check_port_spacing(endpoints, tm_ports)
    base = config.to_dict()
    return [
        CarlaConfig.from_dict(
            {
                **base,
                "host": host,
                "port": port,
                "tm_port": tm_ports[i],
                "seed": None if config.seed is None else config.seed + i,
            }
        )
        for i, (host, port) in enumerate(endpoints)
    ]


def _make_monitored_carla_env(config: CarlaConfig, monitor_file: str | None) -> gym.Env:
    from sb3_carla_td3.envs.carla.env import CarlaEnv  # in the worker process; imports carla lazily

    return Monitor(CarlaEnv(config), filename=monitor_file, info_keywords=("reason",))


def carla_env_fns(
    ports: Sequence[Endpoint], config: CarlaConfig | None = None, monitor_dir: str | None = None
) -> list[Callable[[], gym.Env]]:
    """Picklable factories of Monitor-wrapped :class:`~sb3_carla_td3.envs.carla.env.CarlaEnv`, one per port.

    :param ports: see :func:`carla_env_configs`.
    :param config: see :func:`carla_env_configs`.
    :param monitor_dir: folder for one ``Monitor`` CSV per env (``<port>.monitor.csv`` for a server on
        ``config.host``, ``<host>_<port>.monitor.csv`` for another host); None writes none.
    :return: the factories, in port order.
    """
    configs = carla_env_configs(ports, config)
    default_host = (config or CarlaConfig()).host
    names = [str(c.port) if c.host == default_host else f"{c.host}_{c.port}".replace(":", "_") for c in configs]
    files = [None if monitor_dir is None else str(Path(monitor_dir) / name) for name in names]
    return [partial(_make_monitored_carla_env, c, f) for c, f in zip(configs, files, strict=True)]


def make_carla_vec_env(
    ports: Sequence[Endpoint],
    config: CarlaConfig | None = None,
    monitor_dir: str | None = None,
    start_method: str | None = None,
    restart_crashed_workers: bool = True,
    max_worker_restarts: int = 5,
    restart_window_s: float = 3600.0,
    worker_timeout_s: float | None = 600.0,
) -> SubprocVecEnv:
    """A ``SubprocVecEnv`` with one CARLA env per server, each in its own process.

    With ``restart_crashed_workers`` (the default) it is a :class:`RestartingSubprocVecEnv`: a worker process
    that dies (a segfault in libcarla) or sends nothing for ``worker_timeout_s`` is restarted and its episode
    reported as truncated with ``info["reason"] == "worker_restarted"``, so training goes on.

    Start the servers first, e.g. ``CarlaUE4.sh -RenderOffScreen -carla-rpc-port=2000`` and
    ``... -carla-rpc-port=2003`` (a server uses ports N, N + 1 and N + 2). Each env gets its own Traffic Manager
    port and seed (see :func:`carla_env_configs`). Infos hold only plain values, so they pickle between processes.

    :param ports: RPC port of each server (on ``config.host``) or ``"host:port"`` endpoints; servers on one host
        at least 3 ports apart.
    :param config: settings shared by all envs (host, town, camera, rewards...); None uses ``CarlaConfig()``.
    :param monitor_dir: folder for ``Monitor`` CSV logs (episode return, length and end reason); None writes none.
    :param start_method: multiprocessing start method; None lets SB3 choose (``forkserver`` on Linux). Avoid
        ``fork`` once ``carla`` is imported in the parent (libcarla threads do not survive a fork).
    :param restart_crashed_workers: restart dead or hung workers (else a plain ``SubprocVecEnv``).
    :param max_worker_restarts: restarts allowed within ``restart_window_s``; one more failure raises, >= 0.
    :param restart_window_s: the window in seconds, > 0.
    :param worker_timeout_s: seconds a worker may take to answer one step or reset (a CARLA reset may reconnect
        with backoff, so allow for that) before it counts as hung; None waits forever.
    :return: the vectorised env.
    :raises ValueError: for invalid ports (see :func:`carla_env_configs`) or restart settings.
    """
    env_fns = carla_env_fns(ports, config, monitor_dir)
    if not restart_crashed_workers:
        return SubprocVecEnv(env_fns, start_method=start_method)
    return RestartingSubprocVecEnv(
        env_fns,
        start_method=start_method,
        max_restarts=max_worker_restarts,
        restart_window_s=restart_window_s,
        worker_timeout_s=worker_timeout_s,
    )


@dataclass(frozen=True)
class WorkerError:
    """An exception raised inside a worker process, sent to the parent before the worker exits.

    :param message: exception type, message and traceback.
    """

    message: str


def _guarded_worker(remote: Connection, parent_remote: Connection, env_fn_wrapper: CloudpickleWrapper) -> None:
    """SB3's worker loop; an exception escaping it is sent to the parent (as :class:`WorkerError`) before exiting."""
    try:
        _worker(remote, parent_remote, env_fn_wrapper)
    except BaseException as e:
        with contextlib.suppress(Exception):
            remote.send(WorkerError(f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
        raise


class WorkerLostError(RuntimeError):
    """A worker process died, raised, or did not answer in time."""


class TooManyWorkerRestartsError(RuntimeError):
    """Workers failed more than ``max_restarts`` times within ``restart_window_s``."""


class RestartingSubprocVecEnv(SubprocVecEnv):
    """A ``SubprocVecEnv`` that restarts a worker process that dies, raises or hangs, instead of ending training.

    The restarted worker's env is reset and its step reported as the end of a truncated episode: ``done`` True,
    reward 0, ``info["reason"] == "worker_restarted"``, ``info["TimeLimit.truncated"]`` True,
    ``info["terminal_observation"]`` the last observation the parent saw from that env with its newest camera frame
    repeated (:func:`~sb3_carla_td3.envs.carla.sensors.repeat_newest_frame`), ``info["worker_error"]``
    what happened and ``info["worker_restarts"]`` the running count (also :attr:`worker_restarts`; log it with
    :class:`WorkerRestartLogger`).

    :param env_fns: env factories, one per worker.
    :param start_method: multiprocessing start method; None: ``forkserver`` where available, else ``spawn``.
    :param max_restarts: restarts allowed within ``restart_window_s``; the next failure raises
        :class:`TooManyWorkerRestartsError` with the worker's last error, >= 0.
    :param restart_window_s: the window in seconds, > 0.
    :param worker_timeout_s: seconds one step or reset may take before the worker counts as hung (it is killed
        and restarted), > 0; None waits forever.
    """

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        start_method: str | None = None,
        max_restarts: int = 5,
        restart_window_s: float = 3600.0,
        worker_timeout_s: float | None = 600.0,
    ) -> None:
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_worker_restarts must be an integer >= 0, got {max_restarts!r}")
        if not isinstance(restart_window_s, (int, float)) or not restart_window_s > 0:
            raise ValueError(f"restart_window_s must be a number of seconds > 0, got {restart_window_s!r}")
        if worker_timeout_s is not None and (not isinstance(worker_timeout_s, (int, float)) or not worker_timeout_s > 0):
            raise ValueError(f"worker_timeout_s must be None or a number of seconds > 0, got {worker_timeout_s!r}")
        self.max_restarts, self.restart_window_s, self.worker_timeout_s = (
            max_restarts,
            float(restart_window_s),
            worker_timeout_s,
        )
        #: Workers restarted so far.
        self.worker_restarts = 0
        self._restart_times: deque[float] = deque()
        self._env_fns = list(env_fns)
        self.waiting, self.closed = False, False
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        self._ctx: Any = mp.get_context(start_method)  # a SpawnContext, ForkContext... (BaseContext lacks Process)
        workers = [self._start_worker(k) for k in range(len(self._env_fns))]
        self.remotes: list[Connection] = [remote for remote, _ in workers]
        self.processes = [process for _, process in workers]
        self._send_errors: dict[int, str] = {}
        self.remotes[0].send(("get_spaces", None))
        observation_space, action_space = self._receive(0)
        self._last_obs: list[Any] = [None] * len(self._env_fns)
        VecEnv.__init__(self, len(self._env_fns), observation_space, action_space)
        #: Frames each env stacks (its ``frame_stack`` attribute, else 1): a restarted worker's last observation is
        #: continued by repeating its newest frame.
        stacks = self.get_attr("frame_stack") if self.has_attr("frame_stack") else [1] * self.num_envs
        self._frames = [int(frames or 1) for frames in stacks]

    # ------------------------------------------------------------ workers
    def _start_worker(self, index: int) -> tuple[Connection, Any]:
        remote, work_remote = self._ctx.Pipe()
        args = (work_remote, remote, CloudpickleWrapper(self._env_fns[index]))
        process = self._ctx.Process(target=_guarded_worker, args=args, daemon=True)
        process.start()
        work_remote.close()
        return remote, process

    def _send(self, index: int, message: tuple[str, Any]) -> None:
        try:
            self.remotes[index].send(message)
        except (OSError, EOFError) as e:  # BrokenPipeError: the worker is already gone
            self._send_errors[index] = f"worker {index} could not be sent {message[0]!r}: {type(e).__name__}: {e}"

    def _receive(self, index: int) -> Any:
        """The worker's answer.

        :raises WorkerLostError: if it died, raised or sent nothing within ``worker_timeout_s``.
        """
        if index in self._send_errors:
            raise WorkerLostError(self._send_errors.pop(index))
        remote, process = self.remotes[index], self.processes[index]
        try:
            if self.worker_timeout_s is not None and not remote.poll(self.worker_timeout_s):
                raise WorkerLostError(
                    f"worker {index} (pid {process.pid}) sent nothing for {self.worker_timeout_s:.1f} s (hung)"
                )
            result = remote.recv()
        except (EOFError, OSError) as e:
            process.join(timeout=5.0)
            raise WorkerLostError(
                f"worker {index} (pid {process.pid}) died (exit code {process.exitcode}; {type(e).__name__})"
            ) from e
        if isinstance(result, WorkerError):
            raise WorkerLostError(f"worker {index} (pid {process.pid}) raised {result.message}")
        return result

    def _restart(self, index: int, error: str) -> tuple[Any, dict[str, Any]]:
        """Replace worker ``index`` with a fresh process and reset its env.

        :return: the new env's first observation and reset info.
        :raises TooManyWorkerRestartsError: when this restart exceeds ``max_restarts`` within the window.
        """
        while True:
            now = time.monotonic()
            self._restart_times.append(now)
            while self._restart_times and now - self._restart_times[0] > self.restart_window_s:
                self._restart_times.popleft()
            if len(self._restart_times) > self.max_restarts:
                raise TooManyWorkerRestartsError(
                    f"workers failed {len(self._restart_times)} times within {self.restart_window_s:.0f} s (allowed: "
                    f"max_worker_restarts={self.max_restarts}); last error: {error}"
                )
            self._stop_worker(index)
            self.remotes[index], self.processes[index] = self._start_worker(index)
            self.worker_restarts += 1
            logger.warning("restarted worker %d (restart %d): %s", index, self.worker_restarts, error)
            self._send(index, ("reset", (None, None)))
            try:
                obs, reset_info = self._receive(index)
            except WorkerLostError as e:
                error = str(e)
                continue
            self._last_obs[index] = obs
            return obs, reset_info

    def _stop_worker(self, index: int) -> None:
        process = self.processes[index]
        if process.is_alive():
            process.kill()
        process.join(timeout=5.0)
        with contextlib.suppress(OSError):
            self.remotes[index].close()
        self._send_errors.pop(index, None)

    # ------------------------------------------------------------ VecEnv API
    def step_async(self, actions: np.ndarray) -> None:
        for index, action in enumerate(actions):
            self._send(index, ("step", action))
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        results = []
        for index in range(self.num_envs):
            try:
                results.append(self._receive(index))
            except WorkerLostError as e:
                last_obs = self._last_obs[index]
                obs, reset_info = self._restart(index, str(e))
                info = {
                    "reason": "worker_restarted",
                    "worker_error": str(e),
                    "worker_restarts": self.worker_restarts,
                    "TimeLimit.truncated": True,
                    "terminal_observation": obs if last_obs is None else repeat_newest_frame(last_obs, self._frames[index]),
                }
                results.append((obs, 0.0, True, info, reset_info))
        self.waiting = False
        obs, rewards, dones, infos, reset_infos = zip(*results, strict=True)
        self.reset_infos, self._last_obs = list(reset_infos), list(obs)
        return _stack_obs(obs, self.observation_space), np.stack(rewards), np.stack(dones), list(infos)

    def reset(self) -> VecEnvObs:
        for index in range(self.num_envs):
            self._send(index, ("reset", (self._seeds[index], self._options[index])))
        results = []
        for index in range(self.num_envs):
            try:
                results.append(self._receive(index))
            except WorkerLostError as e:
                results.append(self._restart(index, str(e)))
        obs, reset_infos = zip(*results, strict=True)
        self.reset_infos, self._last_obs = list(reset_infos), list(obs)
        self._reset_seeds()
        self._reset_options()
        return _stack_obs(obs, self.observation_space)

    def close(self) -> None:
        """Close every env; workers that do not answer within a few seconds are killed."""
        if self.closed:
            return
        for index in range(self.num_envs):
            if self.waiting:
                with contextlib.suppress(WorkerLostError):
                    self._receive(index)
            self._send(index, ("close", None))
        for process in self.processes:
            process.join(timeout=10.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=5.0)
        for remote in self.remotes:
            with contextlib.suppress(OSError):
                remote.close()
        self.waiting, self.closed = False, True


class WorkerRestartLogger(BaseCallback):
    """Records ``env/worker_restarts`` (the running count of :class:`RestartingSubprocVecEnv` restarts) in the SB3
    logger whenever a step reports a restarted worker.

    :param verbose: SB3 verbosity.
    """

    def __init__(self, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.worker_restarts = 0

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", ()):
            if info.get("reason") == "worker_restarted":
                self.worker_restarts = max(self.worker_restarts, int(info.get("worker_restarts", 0)))
                self.logger.record("env/worker_restarts", self.worker_restarts)
        return True

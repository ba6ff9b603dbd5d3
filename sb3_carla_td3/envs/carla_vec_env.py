"""Several CARLA servers, one env each, in a ``SubprocVecEnv``."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_carla_td3.envs.carla_config import SERVER_PORT_SPAN, CarlaConfig, server_ports

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
    from sb3_carla_td3.envs.carla_env import CarlaEnv  # in the worker process; imports carla lazily

    return Monitor(CarlaEnv(config), filename=monitor_file, info_keywords=("reason",))


def carla_env_fns(
    ports: Sequence[Endpoint], config: CarlaConfig | None = None, monitor_dir: str | None = None
) -> list[Callable[[], gym.Env]]:
    """Picklable factories of Monitor-wrapped :class:`~sb3_carla_td3.envs.carla_env.CarlaEnv`, one per port.

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
) -> SubprocVecEnv:
    """A ``SubprocVecEnv`` with one CARLA env per server, each in its own process.

    Start the servers first, e.g. ``CarlaUE4.sh -RenderOffScreen -carla-rpc-port=2000`` and
    ``... -carla-rpc-port=2003`` (a server uses ports N, N + 1 and N + 2). Each env gets its own Traffic Manager
    port and seed (see :func:`carla_env_configs`). Infos hold only plain values, so they pickle between processes.

    :param ports: RPC port of each server (on ``config.host``) or ``"host:port"`` endpoints; servers on one host
        at least 3 ports apart.
    :param config: settings shared by all envs (host, town, camera, rewards...); None uses ``CarlaConfig()``.
    :param monitor_dir: folder for ``Monitor`` CSV logs (episode return, length and end reason); None writes none.
    :param start_method: multiprocessing start method; None lets SB3 choose (``forkserver`` on Linux). Avoid
        ``fork`` once ``carla`` is imported in the parent (libcarla threads do not survive a fork).
    :return: the vectorised env.
    :raises ValueError: for invalid ports (see :func:`carla_env_configs`).
    """
    return SubprocVecEnv(carla_env_fns(ports, config, monitor_dir), start_method=start_method)

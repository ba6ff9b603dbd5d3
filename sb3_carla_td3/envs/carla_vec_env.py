"""Several CARLA servers, one env each, in a ``SubprocVecEnv``."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from pathlib import Path

import gymnasium as gym
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_carla_td3.envs.carla_config import CarlaConfig


def carla_env_configs(ports: list[int], config: CarlaConfig | None = None) -> list[CarlaConfig]:
    """One config per server: ``port`` from ``ports``, ``tm_port`` = ``config.tm_port + i``, ``seed`` + i.

    :param ports: RPC port of each server, e.g. ``[2000, 2002]``; each server also uses port + 1, so ports must
        differ by at least 2.
    :param config: settings shared by all envs; None uses ``CarlaConfig()``.
    :return: one validated config per port, in order.
    :raises ValueError: if ``ports`` is empty, holds a non-integer or duplicate, two servers' ports overlap, or a
        Traffic Manager port collides with a server port.
    """
    config = config if config is not None else CarlaConfig()
    if not isinstance(ports, (list, tuple)) or not ports:
        raise ValueError(f"ports must be a non-empty list of CARLA RPC ports, got {ports!r}")
    for port in ports:
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65534:
            raise ValueError(f"ports must hold integers in [1, 65534], got {port!r} in {ports!r}")
    used = sorted(ports)
    for a, b in itertools.pairwise(used):
        if b - a < 2:
            raise ValueError(
                f"ports must differ by at least 2 (a CARLA server uses its port and the next one), got {a} and {b} "
                f"in {ports!r}; e.g. use {[used[0] + 2 * i for i in range(len(used))]}"
            )
    server_ports = {p for port in ports for p in (port, port + 1)}
    tm_ports = [config.tm_port + i for i in range(len(ports))]
    clash = sorted(server_ports.intersection(tm_ports))
    if clash:
        raise ValueError(f"Traffic Manager ports {tm_ports} (tm_port + i) collide with server ports {clash}; change tm_port")
    base = config.to_dict()
    return [
        CarlaConfig.from_dict(
            {**base, "port": port, "tm_port": tm_ports[i], "seed": None if config.seed is None else config.seed + i}
        )
        for i, port in enumerate(ports)
    ]


def _make_monitored_carla_env(config: CarlaConfig, monitor_file: str | None) -> gym.Env:
    from sb3_carla_td3.envs.carla_env import CarlaEnv  # in the worker process; imports carla lazily

    return Monitor(CarlaEnv(config), filename=monitor_file, info_keywords=("reason",))


def carla_env_fns(
    ports: list[int], config: CarlaConfig | None = None, monitor_dir: str | None = None
) -> list[Callable[[], gym.Env]]:
    """Picklable factories of Monitor-wrapped :class:`~sb3_carla_td3.envs.carla_env.CarlaEnv`, one per port.

    :param ports: see :func:`carla_env_configs`.
    :param config: see :func:`carla_env_configs`.
    :param monitor_dir: folder for one ``Monitor`` CSV per env (``<port>.monitor.csv``); None writes none.
    :return: the factories, in port order.
    """
    configs = carla_env_configs(ports, config)
    files = [None if monitor_dir is None else str(Path(monitor_dir) / str(c.port)) for c in configs]
    return [partial(_make_monitored_carla_env, c, f) for c, f in zip(configs, files, strict=True)]


def make_carla_vec_env(
    ports: list[int],
    config: CarlaConfig | None = None,
    monitor_dir: str | None = None,
    start_method: str | None = None,
) -> SubprocVecEnv:
    """A ``SubprocVecEnv`` with one CARLA env per server, each in its own process.

    Start the servers first, e.g. ``CarlaUE4.sh -RenderOffScreen -carla-rpc-port=2000`` and
    ``... -carla-rpc-port=2002``. Each env gets its own Traffic Manager port and seed (see
    :func:`carla_env_configs`). Infos hold only plain values, so they pickle between processes.

    :param ports: RPC port of each server, differing by at least 2.
    :param config: settings shared by all envs (host, town, camera, rewards...); None uses ``CarlaConfig()``.
    :param monitor_dir: folder for ``Monitor`` CSV logs (episode return, length and end reason); None writes none.
    :param start_method: multiprocessing start method; None lets SB3 choose (``forkserver`` on Linux). Avoid
        ``fork`` once ``carla`` is imported in the parent (libcarla threads do not survive a fork).
    :return: the vectorised env.
    :raises ValueError: for invalid ports (see :func:`carla_env_configs`).
    """
    return SubprocVecEnv(carla_env_fns(ports, config, monitor_dir), start_method=start_method)

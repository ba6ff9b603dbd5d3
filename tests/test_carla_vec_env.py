"""make_carla_vec_env: one config per server (ports, Traffic Manager ports, seeds) and a working SubprocVecEnv."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from sb3_carla_td3.envs.carla_config import CarlaConfig
from sb3_carla_td3.envs.carla_vec_env import carla_env_configs, make_carla_vec_env
from sb3_carla_td3.errors import ConfigError

XODR = Path(__file__).parent / "data" / "mini_town.xodr"


def test_each_server_gets_its_port_a_distinct_tm_port_and_seed() -> None:
    base = CarlaConfig(town="Town02", tm_port=8000, seed=10, camera=CarlaConfig().camera)
    configs = carla_env_configs([2000, 2003, 2010], base)
    assert [c.port for c in configs] == [2000, 2003, 2010]
    assert len({c.tm_port for c in configs}) == 3
    assert len({c.seed for c in configs}) == 3
    assert all(c.town == "Town02" for c in configs)


def test_configs_are_independent_copies() -> None:
    configs = carla_env_configs([2000, 2003])
    configs[0].camera.width = 999
    assert configs[1].camera.width != 999


@pytest.mark.parametrize(
    ("ports", "fragment"),
    [
        ([], "non-empty"),
        ([2000, 2001], "differ by at least 3"),
        ([2000, 2000], "differ by at least 3"),
        ([2000, 2002], r"at ports 2000 and 2002 would share port\(s\) \[2002\].*2000, 2001, 2002"),
        ([2004, 2000, 2002], r"at ports 2000 and 2002 .* e\.g\. \[2000, 2003, 2006\]"),
        ([65534], r"integers in \[1, 65533\]"),
        (["localhost"], "integers"),
        (["gpu:20x0"], "host:port"),
        ([":2000"], "host:port"),
        (["2000"], "integers"),
        ([0], "integers"),
        (2000, "non-empty list"),
    ],
)
def test_invalid_ports_raise_value_error(ports: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        carla_env_configs(ports)  # type: ignore[arg-type]


@pytest.mark.parametrize("tm_port", [2000, 2004, 2005])  # 2005 = RPC 2003 + 2: the secondary port
def test_traffic_manager_port_colliding_with_a_server_port_raises_naming_it(tm_port: int) -> None:
    with pytest.raises(ValueError, match=rf"collide with server ports {tm_port} \(server localhost:200[03]\)"):
        carla_env_configs([2000, 2003], CarlaConfig(port=3000, tm_port=tm_port))


@pytest.mark.parametrize("tm_port", [2000, 2001, 2002])
def test_config_keeps_tm_port_off_all_three_server_ports(tm_port: int) -> None:
    with pytest.raises(ConfigError, match="tm_port must differ from the server's ports 2000, 2001, 2002"):
        CarlaConfig(port=2000, tm_port=tm_port)


def test_host_port_endpoints_are_checked_per_host() -> None:
    configs = carla_env_configs(["gpu-1:2000", "gpu-2:2000", "gpu-1:2003", 2000, "[::1]:2010"], CarlaConfig(tm_port=9000))
    assert [(c.host, c.port) for c in configs] == [
        ("gpu-1", 2000),
        ("gpu-2", 2000),
        ("gpu-1", 2003),
        ("localhost", 2000),
        ("::1", 2010),
    ]
    assert [c.tm_port for c in configs] == [9000, 9001, 9002, 9003, 9004]
    with pytest.raises(ValueError, match="servers on gpu-1 at ports 2000 and 2001"):
        carla_env_configs(["gpu-1:2000", "gpu-2:2001", "gpu-1:2001"])


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_subproc_vec_env_steps_with_fake_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Obs and infos cross the process boundary (no carla object in them), one env per port, Monitor logs written."""
    pytest.importorskip("carla")
    from sb3_carla_td3.envs.carla_connection import CarlaBackend
    from sb3_carla_td3.envs.carla_fake import FakeCarlaServer

    xodr = XODR.read_text()
    # Forked workers inherit the patch: each builds its own fake server instead of connecting.
    monkeypatch.setattr(CarlaBackend, "default", classmethod(lambda cls: FakeCarlaServer(xodr).backend))
    config = CarlaConfig(town="mini_town", npc_vehicles=2, settle_ticks=1, max_episode_steps=3)
    venv = make_carla_vec_env([2000, 2003], config, monitor_dir=str(tmp_path), start_method="fork")
    try:
        obs = venv.reset()
        assert obs["image"].shape == (2, config.frames, config.image_size, config.image_size)
        for _ in range(3):
            obs, _, dones, infos = venv.step(np.zeros((2, 2), dtype=np.float32))
        assert dones.all() and [info["reason"] for info in infos] == ["max_steps", "max_steps"]
    finally:
        venv.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2000.monitor.csv", "2003.monitor.csv"]

"""make_carla_vec_env: one config per server (ports, Traffic Manager ports, seeds) and a working SubprocVecEnv."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from sb3_carla_td3.envs.carla.config import CarlaConfig
from sb3_carla_td3.envs.carla.vec_env import (
    RestartingSubprocVecEnv,
    TooManyWorkerRestartsError,
    WorkerRestartLogger,
    carla_env_configs,
    make_carla_vec_env,
)
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
    from sb3_carla_td3.envs.carla.connection import CarlaBackend
    from sb3_carla_td3.envs.carla.fake import FakeCarlaServer

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


# ---------------------------------------------------------------- crashed and hung workers
class FlakyEnv(gym.Env[np.ndarray, np.ndarray]):
    """Counts its steps (obs = [episode, step]); at step ``fail_at`` it exits, hangs or raises, once per marker file
    (every time when ``marker`` is None)."""

    def __init__(self, mode: str = "ok", fail_at: int = 2, marker: str | None = None) -> None:
        self.observation_space = spaces.Box(0.0, 1e6, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.mode, self.fail_at, self.marker = mode, fail_at, marker
        self.episode, self.t = 0, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.array([self.episode, 0], np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        if self.mode != "ok" and self.t == self.fail_at and not (self.marker and os.path.exists(self.marker)):
            if self.marker:
                Path(self.marker).touch()
            if self.mode == "exit":
                os._exit(3)  # as a segfault in libcarla would, without cleanup
            if self.mode == "hang":
                time.sleep(60)
            raise ValueError("boom")
        return np.array([self.episode, self.t], np.float32), 1.0, False, self.t >= 10, {"reason": None}


needs_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")


def _flaky_venv(mode: str, marker: str | None, **kwargs: object) -> RestartingSubprocVecEnv:
    fns = [lambda: FlakyEnv(), lambda: FlakyEnv(mode, 2, marker)]
    return RestartingSubprocVecEnv(fns, start_method="fork", **kwargs)  # type: ignore[arg-type]


@needs_fork
@pytest.mark.parametrize(
    ("mode", "fragment"), [("exit", "died (exit code 3"), ("hang", "hung"), ("raise", "ValueError: boom")]
)
def test_a_dead_hung_or_raising_worker_is_restarted_and_its_episode_truncated(
    tmp_path: Path, mode: str, fragment: str
) -> None:
    venv = _flaky_venv(mode, str(tmp_path / "failed_once"), worker_timeout_s=1.0)
    try:
        venv.reset()
        old_pid = venv.processes[1].pid
        obs, rewards, dones, infos = venv.step(np.zeros((2, 1), np.float32))
        np.testing.assert_array_equal(obs[:, 1], [1, 1])
        obs, rewards, dones, infos = venv.step(np.zeros((2, 1), np.float32))  # worker 1 fails on its step 2
        assert list(dones) == [False, True] and rewards[1] == 0.0
        assert infos[1]["reason"] == "worker_restarted" and infos[1]["TimeLimit.truncated"]
        assert fragment in infos[1]["worker_error"] and infos[1]["worker_restarts"] == 1
        np.testing.assert_array_equal(infos[1]["terminal_observation"], [1, 1])  # the last observation seen
        np.testing.assert_array_equal(obs, [[1, 2], [1, 0]])  # env 0 goes on; env 1 starts afresh
        assert venv.processes[1].pid != old_pid
        assert old_pid not in [p.pid for p in multiprocessing.active_children()]  # killed, not left running
        obs, _, dones, _ = venv.step(np.zeros((2, 1), np.float32))
        np.testing.assert_array_equal(obs, [[1, 3], [1, 1]])
        assert venv.worker_restarts == 1
    finally:
        venv.close()
    assert not any(p.is_alive() for p in venv.processes)


@needs_fork
def test_too_many_restarts_within_the_window_raise_with_the_last_error() -> None:
    venv = _flaky_venv("exit", None, max_restarts=2, restart_window_s=60.0, worker_timeout_s=5.0)
    try:
        venv.reset()
        for _ in range(2):  # fails at step 2 of every episode: restart 1, then restart 2
            venv.step(np.zeros((2, 1), np.float32))
            assert venv.step(np.zeros((2, 1), np.float32))[3][1]["reason"] == "worker_restarted"
        venv.step(np.zeros((2, 1), np.float32))
        with pytest.raises(
            TooManyWorkerRestartsError, match=r"failed 3 times within 60 s .*max_worker_restarts=2.*exit code 3"
        ):
            venv.step(np.zeros((2, 1), np.float32))
    finally:
        venv.close()


def test_make_carla_vec_env_restarts_workers_by_default_and_validates_settings() -> None:
    with pytest.raises(ValueError, match="max_worker_restarts must be an integer >= 0, got -1"):
        make_carla_vec_env([2000], max_worker_restarts=-1)
    with pytest.raises(ValueError, match="worker_timeout_s must be None or a number of seconds > 0, got 0"):
        make_carla_vec_env([2000], worker_timeout_s=0)


def test_worker_restart_logger_records_the_running_count() -> None:
    records: dict[str, float] = {}
    callback = WorkerRestartLogger()
    callback.model = SimpleNamespace(num_timesteps=0, logger=SimpleNamespace(record=records.__setitem__))  # type: ignore[assignment]
    callback.locals = {"infos": [{"reason": None}, {"reason": "worker_restarted", "worker_restarts": 2}]}
    callback.on_step()
    assert records == {"env/worker_restarts": 2}


# ---------------------------------------------------------------- end to end: servers and a worker die
class _StateReport(gym.Wrapper):
    """Writes the fake server's live actors and synchronous mode to ``path`` after the env closed."""

    def __init__(self, env: gym.Env, server: Any, path: Path) -> None:
        super().__init__(env)
        self._server, self._path = server, path

    def close(self) -> None:
        super().close()
        state = {"actors": len(self._server.actors), "sync": bool(self._server.settings.synchronous_mode)}
        self._path.write_text(json.dumps(state))


def _faulty_carla_env(index: int, kill_at_ticks: tuple[int, ...], report_dir: Path) -> gym.Env:
    from sb3_carla_td3.envs.carla.env import CarlaEnv
    from sb3_carla_td3.envs.carla.fake import FakeCarlaServer

    class DyingServer(FakeCarlaServer):
        """Dies at the given tick counts and is back after two refused connection attempts."""

        ticks, refused = 0, 0

        def _tick(self) -> int:
            self.ticks += 1
            if self.ticks in kill_at_ticks:
                self.kill()
            return super()._tick()

        def connect(self, host: str, port: int, timeout_s: float) -> Any:
            if not self.alive:
                self.refused += 1
                if self.refused % 2 == 0:
                    self.restart()
            return super().connect(host, port, timeout_s)

    server = DyingServer(XODR.read_text())
    config = CarlaConfig(
        town="mini_town", npc_vehicles=2, settle_ticks=1, max_episode_steps=40, reconnect_delay_s=0.0, seed=index
    )
    env = CarlaEnv(config, backend=server.backend)
    return _StateReport(env, server, report_dir / f"env{index}_{os.getpid()}.json")


@needs_fork
def test_a_run_with_two_server_deaths_and_a_killed_worker_finishes_every_step(tmp_path: Path) -> None:
    """A TD3CNN run of 1,000 vec-env steps over 2 fake-server CARLA envs: env 0's server dies twice, env 1's worker is
    SIGKILLed once. Every step completes, the learner trains on, the events show in the infos, and each env that
    closed left 0 actors and async mode."""
    pytest.importorskip("carla")
    from sb3_carla_td3 import TD3CNN

    fns = [partial(_faulty_carla_env, 0, (250, 700), tmp_path), partial(_faulty_carla_env, 1, (), tmp_path)]
    venv = RestartingSubprocVecEnv(fns, start_method="fork", worker_timeout_s=60.0)
    reasons: list[str] = []

    class KillWorkerAndCollect(BaseCallback):
        def _on_step(self) -> bool:
            if self.n_calls == 500:
                os.kill(venv.processes[1].pid, signal.SIGKILL)  # a worker segfaulting in libcarla
            dones, infos = self.locals["dones"], self.locals["infos"]
            reasons.extend(info["reason"] for info, done in zip(infos, dones, strict=True) if done)
            return True

    callback = KillWorkerAndCollect()
    try:
        model = TD3CNN(
            "MultiInputPolicy",
            venv,
            encoder="shared",
            learning_starts=1900,  # 50 gradient steps at the end: the learner keeps training after the faults
            batch_size=8,
            buffer_size=2000,
            policy_kwargs={"net_arch": [16], "features_extractor_kwargs": {"cnn": "nature", "rnn": None, "cnn_features": 16}},
            seed=0,
            device="cpu",
        )
        model.learn(2000, callback=callback)
    finally:
        venv.close()
    steps = callback.n_calls
    assert model.num_timesteps == 2000 and model.last_train_stats.n_updates == 50
    assert steps == 1000
    assert reasons.count("server_lost") == 2 and reasons.count("worker_restarted") == 1
    assert venv.worker_restarts == 1
    reports = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("env*.json"))]
    assert len(reports) == 2  # the killed worker never closed; its replacement did
    assert all(r == {"actors": 0, "sync": False} for r in reports)


def test_repeat_newest_frame_continues_the_stack_and_leaves_vectors() -> None:
    from sb3_carla_td3.envs.carla.sensors import repeat_newest_frame

    image = np.arange(3 * 2 * 4 * 4, dtype=np.uint8).reshape(6, 4, 4)  # 3 frames of 2 channels
    obs = {"image": image, "vector": np.array([1.0, 2.0], np.float32)}
    after = repeat_newest_frame(obs, frames=3)
    assert np.array_equal(after["image"][:4], image[2:]) and np.array_equal(after["image"][4:], image[4:])
    assert np.array_equal(after["vector"], obs["vector"]) and after["vector"] is not obs["vector"]
    assert np.array_equal(obs["image"], np.arange(96, dtype=np.uint8).reshape(6, 4, 4))  # the input is not modified
    assert np.array_equal(repeat_newest_frame(image, frames=1), image)

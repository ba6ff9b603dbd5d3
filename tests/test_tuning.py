"""Hyperparameter search: space files, health pruning, workers sharing one storage (SQLite, journal, PostgreSQL),
a worker killed mid-trial, and the study report with its best config."""

from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="the tune extra is not installed (pip install -e '.[tune]')")

from optuna.trial import TrialState  # noqa: E402

from sb3_carla_td3.cli import main  # noqa: E402
from sb3_carla_td3.config import config_from_dict, load_config  # noqa: E402
from sb3_carla_td3.errors import ConfigError  # noqa: E402
from sb3_carla_td3.train_stats import TrainStats  # noqa: E402
from sb3_carla_td3.tuning import (  # noqa: E402
    HEALTH_CHECKS,
    HealthPruningCallback,
    health_failure,
    load_space,
    make_storage,
    space_from_dict,
    tune,
)

REPO = Path(__file__).resolve().parent.parent

#: CarRacing's 7-float vector (no rendering) and tiny networks: a 100-step trial takes about 3 s on one core.
BASE: dict[str, Any] = {
    "env": {
        "name": "carracing",
        "image_obs": False,
        "vector_obs": True,
        "action_repeat": 4,
        "max_episode_steps": 40,
        "offtrack_steps": 10,
        "stuck_steps": 15,
    },
    "encoder": {"net_arch": [16]},
    "td3": {"batch_size": 8, "buffer_size": 500, "learning_starts": 50},
    "run": {
        "total_timesteps": 100,
        "eval_freq": 50,
        "eval_episodes": 1,
        "checkpoint_freq": 0,
        "progress_bar": False,
        "device": "cpu",
        "threads": 1,
    },
    "monitor": {
        "baseline_episodes": 2,
        "collapse_window": 2,
        "reward_window": 3,
        "q_check_freq": 50,
        "saturation_patience_steps": 40,
    },
}
SPACE: dict[str, Any] = {
    "params": {
        "td3.learning_rate": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        "td3.policy_delay": {"type": "int", "low": 1, "high": 3},
        "encoder.net_arch": {"type": "categorical", "choices": [[16], [32, 32]]},
    },
    "budget": {"total_timesteps": 100, "eval_freq": 50},
    "failures": {"heartbeat_interval": 1, "grace_period": 4, "poll_interval": 0.5},
}


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def study_files(tmp_path: Path, space: dict[str, Any] | None = None) -> tuple[Path, Path]:
    return write_yaml(tmp_path / "base.yaml", BASE), write_yaml(tmp_path / "space.yaml", space or SPACE)


def finished(study: Any) -> list[Any]:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def start_worker(base: Path, space: Path, storage: str, study_dir: Path, n_trials: int, seed: int) -> subprocess.Popen:
    """One ``sb3-carla-td3 tune`` process, as a user starts it on each machine (output to a log file)."""
    command = [sys.executable, "-m", "sb3_carla_td3", "tune", "--config", str(base), "--space", str(space),
               "--n-trials", str(n_trials), "--storage", storage, "--study-name", "shared", "--study-dir",
               str(study_dir), "--seed", str(seed)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with open(study_dir.parent / f"worker{seed}.log", "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def wait_all(workers: list[subprocess.Popen], study_dir: Path, timeout: float = 240) -> None:
    for seed, worker in enumerate(workers):
        rc = worker.wait(timeout=timeout)
        log = (study_dir.parent / f"worker{seed}.log").read_text()
        assert rc == 0, log[-3000:]


# ----------------------------------------------------------------------------------------------------- space files


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"td3.learning_rat": {"type": "float", "low": 1e-4, "high": 1e-3}},
         "params.td3.learning_rat: the value 0.0001 is not valid in the base config"),
        ({"td3.learning_rate": {"type": "float", "low": 1e-3, "high": 1e-4}}, "empty range low=0.001, high=0.0001"),
        ({"td3.tau": {"type": "float", "low": 0.01, "high": 0.01}}, "empty range low=0.01, high=0.01: allowed low < high"),
        ({"td3.learning_rate": {"type": "float", "low": 0, "high": 1e-3, "log": True}},
         "low=0.0: a log scale needs positive bounds: allowed low > 0"),
        ({"td3.batch_size": {"type": "int", "low": 0, "high": 64, "log": True}}, "a log scale needs positive bounds"),
        ({"td3.learning_rate": {"type": "float", "low": "small", "high": 1e-3}}, "low='small' is not a number (str)"),
        ({"td3.batch_size": {"type": "int", "low": 8.5, "high": 64}}, "low=8.5 is not an int (float)"),
        ({"td3.batch_size": {"type": "categorical", "choices": [64, "big"]}}, "batch_size: expected int, got 'big'"),
        ({"td3.learning_rate": {"type": "float", "low": 1e-4, "high": 1.0, "log": "yes"}}, "log='yes' is not true or false"),
        ({"td3.learning_rate": {"type": "floaty", "low": 1e-4, "high": 1e-3}}, "type='floaty' is not one of float, int"),
        ({"td3.learning_rate": {"type": "float", "lo": 1e-4, "high": 1e-3}}, "unknown key 'lo'; did you mean 'low'"),
        ({"td3.batch_size": {"type": "categorical", "choices": []}}, "choices=[]: expected a non-empty list"),
        ({"run.seed": {"type": "int", "low": 0, "high": 9}}, "must be a dotted config key in one of the sections td3"),
        ({"td3.gamma": {"type": "float", "low": 0.9, "high": 1.5}}, "gamma=1.5 is out of range: allowed (0, 1]"),
        ({}, "params is empty"),
    ],
)  # fmt: skip
def test_bad_space_file_names_the_file_key_and_allowed_range(tmp_path, params, message):
    path = write_yaml(tmp_path / "bad_space.yaml", {"params": params})
    with pytest.raises(ConfigError) as error:
        load_space(path, config_from_dict(BASE))
    assert message in str(error.value) and str(path) in str(error.value)


def test_unknown_config_key_in_space_suggests_the_closest_field(tmp_path):
    path = write_yaml(tmp_path / "space.yaml", {"params": {"td3.learning_rat": {"type": "categorical", "choices": [1e-3]}}})
    with pytest.raises(ConfigError, match="unknown key 'learning_rat'; did you mean 'learning_rate'"):
        load_space(path, BASE)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"pruner": {}}, "unknown key 'pruner'; did you mean 'pruning'"),
        ({"budget": {"total_timesteps": 100, "eval_freq": 30}}, "eval_freq=30 must be >= 1 and divide total_timesteps=100"),
        ({"budget": {"total_timesteps": -5}}, "total_timesteps=-5 is out of range"),
        ({"budget": {"output_dir": "x"}}, "budget: unknown key 'output_dir'"),
        ({"pruning": {"health": ["q_bound", "vibes"]}}, "pruning.health=['q_bound', 'vibes']: allowed true, false or a list"),
        ({"pruning": {"median": {"n_startup": 3}}}, "pruning.median: unknown key 'n_startup'"),
        ({"failures": {"heartbeat_interval": 10, "grace_period": 5}}, "grace_period=5.0 must exceed heartbeat_interval=10.0"),
        ({"failures": {"max_retry": -1}}, "failures.max_retry=-1 is out of range: allowed >= 0"),
    ],
)  # fmt: skip
def test_bad_space_sections_are_config_errors(extra, message):
    with pytest.raises(ConfigError, match=None) as error:
        space_from_dict({"params": SPACE["params"], **extra}, BASE, source="space.yaml")
    assert message in str(error.value)


def test_space_parses_every_kind_and_the_pruning_options():
    data = {**SPACE, "pruning": {"health": ["q_bound", "actor_saturation"], "median": {"n_startup_trials": 2}}}
    space = space_from_dict(data, BASE, source="space.yaml")
    assert [space.params[k].kind for k in SPACE["params"]] == ["float", "int", "categorical"]
    assert space.params["td3.learning_rate"].log and space.params["encoder.net_arch"].decode("[32, 32]") == [32, 32]
    assert space.pruning.health == ["q_bound", "actor_saturation"] and space.pruning.median is not None
    assert space.pruning.median.n_startup_trials == 2 and space.failures.grace == 4
    assert space_from_dict({"params": SPACE["params"]}, BASE).pruning.health == list(HEALTH_CHECKS)
    trial = config_from_dict(space.trial_data(BASE, {"td3.learning_rate": 2e-3, "encoder.net_arch": [32, 32]}))
    assert (trial.td3.learning_rate, trial.encoder.net_arch, trial.run.eval_freq) == (2e-3, [32, 32], 50)


def test_tune_command_with_a_bad_space_exits_1_naming_the_key(tmp_path, capsys):
    base, space = study_files(tmp_path, {"params": {"td3.tau": {"type": "float", "low": 0.5, "high": 0.1}}})
    assert main(["tune", "--config", str(base), "--space", str(space), "--n-trials", "1"]) == 1
    assert f"{space}: params.td3.tau: empty range low=0.5, high=0.1" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------- health pruning


def test_a_broken_trial_is_pruned_by_the_health_check_before_its_budget_ends(tmp_path):
    """A learning rate of 1.0 saturates the actor within ~100 steps; the trial stops there, reason stored."""
    space = {"params": {"td3.learning_rate": {"type": "categorical", "choices": [1.0]}},
             "budget": {"total_timesteps": 400, "eval_freq": 100}}  # fmt: skip
    result = tune(config_from_dict(BASE, source="base.yaml"), space, n_trials=1, study_dir=tmp_path / "study")
    (trial,) = result.study.get_trials()
    assert trial.state == TrialState.PRUNED
    attrs = trial.user_attrs
    assert attrs["prune_kind"] == "health" and attrs["prune_check"] in HEALTH_CHECKS
    assert 50 < attrs["prune_timestep"] < 400 and attrs["prune_check"] in attrs["prune_reason"]
    run_dir = Path(attrs["run_dir"])
    summary = json.loads((run_dir / "report.json").read_text())["data"]["summary"]
    assert summary["timesteps"] < 400 and summary["status"] == "stopped"  # stopped early: budget not spent
    assert "pruned at" in (run_dir / "report.md").read_text() and (run_dir / "config.yaml").is_file()

    # The same command again continues the study: nothing left to do, or no time left; other files are refused.
    again = tune(config_from_dict(BASE, source="base.yaml"), space, n_trials=1, study_dir=tmp_path / "study")
    assert again.ran == [] and again.finished == 1
    assert (
        tune(config_from_dict(BASE, source="base.yaml"), space, n_trials=3, study_dir=tmp_path / "study", timeout=0).ran == []
    )
    other = {**space, "params": {"td3.learning_rate": {"type": "categorical", "choices": [0.5]}}}
    with pytest.raises(ConfigError, match="was started with another space"):
        tune(config_from_dict(BASE, source="base.yaml"), other, n_trials=2, study_dir=tmp_path / "study")

    report = tmp_path / "study" / "report.md"
    base_file, space_file = study_files(tmp_path, space)  # the command line names the same study: tune-base
    args = ["tune", "--config", str(base_file), "--space", str(space_file), "--n-trials", "1", "--report"]
    assert main([*args, "--study-dir", str(tmp_path / "study")]) == 0
    text = report.read_text()
    assert "## Pruned trials" in text and f"| 0 | health | {attrs['prune_timestep']} |" in text
    assert "No trial completed yet." in text and not (tmp_path / "study" / "best_config.yaml").exists()


# ------------------------------------------------------------------------------------------------ shared storages


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of its own: initdb in a temporary directory, a free loopback port, stopped at the end."""
    pg_ctls = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not pg_ctls:
        pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/pg_ctl): apt-get install postgresql")
    runuser = shutil.which("runuser")
    if runuser is None or os.geteuid() != 0:
        pytest.skip("starting PostgreSQL needs root and runuser (the server refuses to run as root)")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no 'postgres' system user to run the server as")
    psycopg2 = pytest.importorskip("psycopg2", reason="no PostgreSQL driver: pip install -e '.[tune]'")
    bin_dir = Path(pg_ctls[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="sb3-carla-td3-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    as_postgres = [runuser, "-u", "postgres", "--"]
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        if initdb.returncode != 0:
            pytest.skip(f"initdb failed: {initdb.stderr[-500:]}")
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        start = subprocess.run([*pg_ctl, "-o", options, "-l", str(root / "server.log"), "-w", "start"],
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        if start.returncode != 0:
            pytest.skip(f"PostgreSQL did not start: {start.stderr[-500:]}")
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE optuna_test")
        connection.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/optuna_test"  # the docs' form: the driver is not named
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_worker_processes_on_one_storage_finish_exactly_n_trials(tmp_path, request, backend):
    base, space = study_files(tmp_path)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    storage = f"sqlite:///{study_dir / 'shared.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    n_trials = 3
    workers = [start_worker(base, space, storage, study_dir, n_trials, seed) for seed in range(2)]
    wait_all(workers, study_dir)

    study = optuna.load_study(study_name="shared", storage=make_storage(storage))
    done = finished(study)
    assert len(done) == n_trials
    assert not [t for t in study.get_trials() if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    unexpected = [t for t in study.get_trials() if t.state == TrialState.FAIL and not t.user_attrs.get("surplus")]
    assert not unexpected
    run_dirs = [t.user_attrs["run_dir"] for t in done]
    assert len(set(run_dirs)) == n_trials  # no trial twice
    assert sorted(p.name for p in study_dir.glob("trial_*")) == sorted(Path(d).name for d in run_dirs)
    pids = {str(w.pid) for w in workers}
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in done} <= pids
    for trial in (t for t in done if t.state == TrialState.COMPLETE):
        assert sorted(trial.intermediate_values) == [50, 100]  # reported at each evaluation
        assert trial.value == trial.intermediate_values[100]  # the objective: the evaluation at the budget's end
        assert (Path(trial.user_attrs["run_dir"]) / "report.md").is_file()

    if backend == "sqlite":  # the report and its best config, which `train --config` runs unchanged
        info = json.loads((study_dir / "study.json").read_text())
        assert info["study_name"] == "shared" and info["storage"] == storage
        assert main(["tune-report", str(study_dir)]) == 0
        text = (study_dir / "report.md").read_text()
        assert "## Best trials" in text and "## Parameter importance" in text and "td3.learning_rate" in text
        for name in ("optimization_history.png", "parallel_coordinate.png"):
            assert (study_dir / name).stat().st_size > 0
        best = max((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        config = load_config(study_dir / "best_config.yaml")
        assert config.td3.learning_rate == best.params["td3.learning_rate"]
        assert config.run.total_timesteps == 100 and config.run.progress_bar is False  # the base's own setting
        assert main(["train", "--config", str(study_dir / "best_config.yaml"), "--out", str(tmp_path / "best")]) == 0
        assert (tmp_path / "best" / "report.md").is_file()


def test_a_worker_killed_mid_trial_leaves_no_running_trial_and_the_study_completes(tmp_path):
    """SIGKILL during trial 0 (journal-file storage): the next worker fails it after the grace period, runs its
    parameters again and finishes the study."""
    space = {**SPACE, "budget": {"total_timesteps": 200, "eval_freq": 100}}
    base, space_path = study_files(tmp_path, space)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    storage = f"journal:{tmp_path / 'journal.log'}"
    worker = start_worker(base, space_path, storage, study_dir, 2, seed=0)
    deadline = time.monotonic() + 120
    running = None
    while running is None and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.3)
        if (tmp_path / "journal.log").exists():
            try:
                study = optuna.load_study(study_name="shared", storage=make_storage(storage))
            except KeyError:
                continue
            running = next(
                (t for t in study.get_trials() if t.state == TrialState.RUNNING and "heartbeat" in t.user_attrs), None
            )
    assert running is not None, "no trial started"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()

    result = tune(load_config(base), space_path, n_trials=2, storage=storage, study_name="shared", study_dir=study_dir)
    trials = {t.number: t for t in result.study.get_trials()}
    killed = trials[running.number]
    assert killed.state == TrialState.FAIL and "no heartbeat" in killed.user_attrs["fail_reason"]
    retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == running.number)
    assert retry.params == killed.params and retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert len(finished(result.study)) == 2 and result.finished == 2
    assert not [t for t in trials.values() if t.state == TrialState.RUNNING]
    assert main(["tune-report", str(study_dir)]) == 0
    text = (study_dir / "report.md").read_text()
    assert f"| {running.number} | no heartbeat for" in text and f"| {retry.number} |" in text


def test_a_worker_stopped_by_sigterm_fails_its_trial_at_once_and_queues_its_parameters(tmp_path):
    """SIGTERM (a preempted machine, a scheduler's stop) mid-trial: the worker ends the trial FAIL itself (no grace
    period to wait out), queues its parameters again and exits 130."""
    space = {**SPACE, "budget": {"total_timesteps": 2000, "eval_freq": 1000}}
    base, space_path = study_files(tmp_path, space)
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    worker = start_worker(base, space_path, storage, study_dir, 1, seed=0)
    progress = study_dir / "trial_0000" / "progress.csv"
    deadline = time.monotonic() + 120
    while not (progress.exists() and progress.stat().st_size > 0) and time.monotonic() < deadline and worker.poll() is None:
        time.sleep(0.2)  # SB3 writes its first progress row inside learn()
    assert worker.poll() is None, (study_dir.parent / "worker0.log").read_text()[-3000:]
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=60) == 130

    study = optuna.load_study(study_name="shared", storage=make_storage(storage))
    stopped = study.get_trials()[0]
    assert stopped.state == TrialState.FAIL
    assert stopped.user_attrs["fail_reason"].startswith("interrupted (Ctrl-C or SIGTERM) at timestep")
    assert "queued again" in stopped.user_attrs["fail_reason"]
    assert (study_dir / "trial_0000" / "checkpoints" / "latest.json").is_file()  # train() saved it like Ctrl-C
    queued = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [(t.system_attrs["fixed_params"], t.user_attrs["retry_of"]) for t in queued] == [(stopped.params, 0)]


def test_a_bare_postgresql_url_names_an_installed_driver(monkeypatch):
    # SQLAlchemy 2.1 reads a bare postgresql:// as psycopg (3); the tune extra installs psycopg2: name it.
    import importlib.util

    from sb3_carla_td3.tuning import storage

    installed = {"psycopg2"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in installed else None)
    assert storage.with_driver("postgresql://u:pw@db:5432/s") == "postgresql+psycopg2://u:pw@db:5432/s"
    assert storage.with_driver("postgres://db/s") == "postgresql+psycopg2://db/s"
    assert storage.with_driver("postgresql+psycopg://db/s") == "postgresql+psycopg://db/s"  # named: kept
    assert storage.with_driver("sqlite:///x.db") == "sqlite:///x.db"
    installed = {"psycopg"}
    assert storage.with_driver("postgresql://db/s") == "postgresql+psycopg://db/s"
    installed = set()
    with pytest.raises(ConfigError, match=r"--storage postgresql://u:\*\*\*@db/s: no PostgreSQL driver .*\[tune\]"):
        storage.with_driver("postgresql://u:pw@db/s")


def test_a_storage_without_its_driver_is_a_config_error_at_once_with_the_password_masked(monkeypatch):
    monkeypatch.setitem(sys.modules, "MySQLdb", None)  # import MySQLdb raises ImportError
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"--storage mysql://u:\*\*\*@127.0.0.1:1/db: its database driver is not installed"):
        make_storage("mysql://u:secret@127.0.0.1:1/db")
    assert time.perf_counter() - started < 2.0, "a missing driver is not a race to retry"


def test_parser_documents_the_tune_flags():
    from sb3_carla_td3.cli import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    help_text = choices["tune"].format_help()
    for flag in ("--config", "--space", "--n-trials", "--storage", "--study-name", "--timeout", "--seed", "--report"):
        assert flag in help_text
    assert "--storage" in choices["tune-report"].format_help()


@pytest.mark.parametrize("space", sorted((REPO / "configs").glob("tune_*.yaml")), ids=lambda p: p.name)
def test_shipped_space_files_load_against_the_docs_base_config(space):
    loaded = load_space(space, load_config(REPO / "configs" / "carracing_vector.yaml"))
    assert loaded.params and loaded.budget["total_timesteps"] % loaded.budget["eval_freq"] == 0


def test_median_pruner_stops_a_trial_below_the_median_but_never_at_its_last_evaluation():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    good.report(100.0, 50)
    study.tell(good, 100.0)

    for step, expect_pruned in ((100, False), (50, True)):
        trial = study.ask()
        callback = HealthPruningCallback(trial, checks=[], total_timesteps=100)
        evaluations = SimpleNamespace(results=[{"timestep": step, "mean_return": -5.0}])
        callback._health, callback._evaluation = object(), evaluations  # type: ignore[assignment]
        assert callback._judge() is not expect_pruned
        assert callback.reported == [(step, -5.0)] and trial.storage.get_trial(trial._trial_id).intermediate_values
        if expect_pruned:
            assert callback.pruned is not None and callback.pruned[:3] == ("median", "median", 50)
            assert "below the median" in callback.pruned[3]
        study.tell(trial, state=TrialState.PRUNED)


def test_pruning_callback_reads_the_callbacks_attached_by_train_and_fails_loudly_without_them():
    callback = HealthPruningCallback(optuna.create_study().ask(), checks=[])
    with pytest.raises(RuntimeError, match="TrainingHealthCallback or DrivingEvalCallback attached"):
        callback._on_step()
    health, evaluation = object(), SimpleNamespace(results=[])
    assert callback.attach(health, evaluation) is callback  # type: ignore[arg-type]
    assert callback._health is health and callback._evaluation is evaluation


def test_health_failure_names_the_first_failed_check_and_counts_nonfinite_updates():
    from sb3_carla_td3.callbacks import TrainingHealthCallback

    health = TrainingHealthCallback()
    assert health_failure(health, TrainStats(nonfinite_skips=0), HEALTH_CHECKS) is None
    assert health_failure(health, TrainStats(nonfinite_skips=2), HEALTH_CHECKS, max_nonfinite_skips=2) is None
    check, _, reason = health_failure(health, TrainStats(nonfinite_skips=3), HEALTH_CHECKS, max_nonfinite_skips=2)
    assert check == "nonfinite_updates" and "3 non-finite updates" in reason
    health.episodes.collapsed_at_step, health.episodes.rolling, health.episodes.baseline = 120, 2.0, 40.0
    assert health_failure(health, None, ["q_bound", "episode_length"])[:2] == ("episode_length", 120)
    assert health_failure(health, None, ["q_bound"]) is None


def test_a_trial_started_past_n_trials_by_a_race_ends_at_once_without_training(tmp_path):
    from sb3_carla_td3.tuning import _objective

    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=1.0))  # the study already holds its n_trials=1
    space = space_from_dict(SPACE, BASE)
    ran: list[int] = []
    objective = _objective(study, config_from_dict(BASE).to_dict(), space, tmp_path, 1, 0, ran)
    study.optimize(objective, n_trials=1, catch=(Exception,))
    surplus = study.get_trials()[-1]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs["surplus"] is True
    assert ran == [] and not list(tmp_path.glob("trial_*"))

"""Hyperparameter search on Optuna: a search space in YAML, trials pruned by the health checks, shared storages.

A study is a base run config plus a search-space file. Every trial is a normal phase-3 run directory (config.yaml,
report.md, plots) under the study's folder; its objective is the mean deterministic evaluation return at the end of
the trial's budget, reported to Optuna at each evaluation. A trial whose :class:`TrainingHealthCallback` flags a
failure (Q over its bound, a saturated actor, an episode-length collapse, a gradient over its clip limit, non-finite
updates) is pruned at once, with the reason and the timestep stored as trial attributes; Optuna's median pruner can
run on top. The storage is a SQLite file in the study folder by default, or any Optuna storage URL (a journal file
``journal:PATH`` on a shared filesystem, ``postgresql://...``): workers started with the same command on many
machines share one study. Every running trial writes a heartbeat; a worker finds trials whose heartbeat stopped (a
killed worker), marks them FAIL and re-queues their parameters (at most ``failures.max_retry`` times).

Space file (every section but ``params`` optional)::

    params:                      # dotted keys of the run config: td3.*, encoder.*, env.*, monitor.*
      td3.learning_rate: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      td3.batch_size: {type: categorical, choices: [64, 128, 256]}
      encoder.net_arch: {type: categorical, choices: [[64, 64], [256, 256]]}
      env.action_repeat: {type: int, low: 2, high: 8, step: 2}
    budget: {total_timesteps: 20000, eval_freq: 5000, eval_episodes: 3}   # run.* keys set on every trial
    pruning: {health: true, max_nonfinite_skips: 0, median: {n_startup_trials: 5, n_warmup_steps: 5000}}
    failures: {heartbeat_interval: 30, grace_period: 120, max_retry: 2, max_consecutive_errors: 3}
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import yaml
from stable_baselines3.common.callbacks import BaseCallback

from sb3_carla_td3.config import RunConfig, apply_overrides, config_from_dict, load_config
from sb3_carla_td3.errors import ConfigError

if TYPE_CHECKING:
    import optuna

    from sb3_carla_td3.callbacks import TrainingHealthCallback
    from sb3_carla_td3.validation.evaluation import DrivingEvalCallback
    from sb3_carla_td3.validation.report import PhaseReport
    from sb3_carla_td3.validation.runner import RunResult

__all__ = [
    "HEALTH_CHECKS",
    "FailureSettings",
    "HealthPruningCallback",
    "ParamSpec",
    "PruningSettings",
    "SearchSpace",
    "TuneResult",
    "load_space",
    "make_storage",
    "space_from_dict",
    "tune",
    "tune_report",
]

#: The health criteria that prune a trial (keys of ``TrainingHealthCallback.verdict()``, grad_clip for both nets,
#: plus non-finite updates skipped by TD3CNN).
HEALTH_CHECKS = ("q_bound", "actor_saturation", "episode_length", "grad_clip", "nonfinite_updates")
#: Config sections a search-space parameter may set.
PARAM_SECTIONS = ("td3", "encoder", "env", "monitor")
#: ``run`` keys the ``budget`` section may set on every trial.
BUDGET_KEYS = ("total_timesteps", "eval_freq", "eval_episodes", "checkpoint_freq", "threads", "device", "seed")
STUDY_FILE = "study.json"
REPORT_FILE = "report.md"
BEST_CONFIG_FILE = "best_config.yaml"
TRIAL_DIR = "trial_{number:04d}"


def _closest(key: str, valid: Sequence[str]) -> str:
    match = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.0)
    return f"; did you mean {match[0]!r}?" if match else ""


def _number(value: Any, where: str, integer: bool = False) -> float:
    """A YAML number (``1e-3`` read by PyYAML as a string included); ConfigError naming ``where`` otherwise."""
    if isinstance(value, str) and not integer:
        try:
            value = float(value)
        except ValueError:
            pass
    kind = "an int" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise ConfigError(f"{where}={value!r} is not {kind} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ConfigError(f"{where}={value!r} is not finite")
    return int(value) if integer else float(value)


def _check_keys(data: Mapping[str, Any], valid: Sequence[str], where: str) -> None:
    for key in data:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}{_closest(str(key), valid)}; allowed: {', '.join(valid)}")


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {value!r} ({type(value).__name__})")
    return value


@dataclass
class ParamSpec:
    """One searched parameter.

    :param name: dotted config key, e.g. ``td3.learning_rate`` or ``env.reward.stuck_penalty``
    :param kind: ``float``, ``int`` or ``categorical``
    :param low: lower bound (float, int)
    :param high: upper bound (float, int), > low
    :param log: sample on a log scale (bounds > 0; int: >= 1)
    :param step: grid step (float, int); None: continuous (float) or 1 (int)
    :param choices: the values (categorical); lists such as ``net_arch`` sizes are allowed
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def labels(self) -> dict[Any, Any]:
        """Optuna's value for each choice (lists and mappings as JSON text) -> the choice."""
        return {json.dumps(c) if isinstance(c, (list, dict)) else c: c for c in self.choices}

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample this parameter in ``trial``.

        :param trial: the Optuna trial
        :return: the config value (categorical lists decoded)
        """
        if self.kind == "categorical":
            labels = self.labels()
            return labels[trial.suggest_categorical(self.name, list(labels))]
        assert self.low is not None and self.high is not None
        if self.kind == "int":
            step = int(self.step or 1)
            assert isinstance(self.low, int) and isinstance(self.high, int)
            return trial.suggest_int(self.name, self.low, self.high, step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def decode(self, value: Any) -> Any:
        """:return: the config value of Optuna's stored ``value`` (categorical JSON labels decoded)"""
        return self.labels().get(value, value) if self.kind == "categorical" else value

    def probes(self) -> list[Any]:
        """:return: the values checked against the base config when the space is loaded (bounds, every choice)"""
        if self.kind == "categorical":
            return list(self.choices)
        return [int(v) if self.kind == "int" else v for v in (self.low, self.high) if v is not None]


@dataclass
class MedianSettings:
    """Optuna's MedianPruner on the intermediate evaluation returns.

    :param n_startup_trials: trials finished before any pruning
    :param n_warmup_steps: env steps of a trial before it can be pruned
    :param interval_steps: evaluations between pruning checks
    """

    n_startup_trials: int = 5
    n_warmup_steps: int = 0
    interval_steps: int = 1


@dataclass
class PruningSettings:
    """The ``pruning:`` section.

    :param health: prune on these health checks (``true``: all of :data:`HEALTH_CHECKS`, ``false``: none)
    :param max_nonfinite_skips: non-finite updates tolerated before ``nonfinite_updates`` prunes
    :param median: the median pruner's settings; None: off
    """

    health: list[str] = field(default_factory=lambda: list(HEALTH_CHECKS))
    max_nonfinite_skips: int = 0
    median: MedianSettings | None = None


@dataclass
class FailureSettings:
    """The ``failures:`` section: heartbeats, retries of trials whose worker died, and errors.

    :param heartbeat_interval: seconds between a running trial's heartbeats
    :param grace_period: seconds without a heartbeat after which a RUNNING trial is failed (None: 4 intervals)
    :param max_retry: times the parameters of a trial failed that way are run again
    :param max_consecutive_errors: a worker stops after this many of its trials raised in a row
    :param poll_interval: seconds a worker waits while the trials left are running elsewhere
    """

    heartbeat_interval: float = 30.0
    grace_period: float | None = None
    max_retry: int = 2
    max_consecutive_errors: int = 3
    poll_interval: float = 5.0

    @property
    def grace(self) -> float:
        """:return: the effective grace period in seconds"""
        return self.grace_period if self.grace_period is not None else 4 * self.heartbeat_interval


@dataclass
class SearchSpace:
    """A parsed search-space file.

    :param params: the searched parameters, by dotted key
    :param budget: ``run`` keys set on every trial
    :param pruning: health and median pruning
    :param failures: heartbeats and retries
    :param source: the file it came from
    :param data: the file's parsed YAML (stored with the study)
    """

    params: dict[str, ParamSpec]
    budget: dict[str, Any] = field(default_factory=dict)
    pruning: PruningSettings = field(default_factory=PruningSettings)
    failures: FailureSettings = field(default_factory=FailureSettings)
    source: str = "<dict>"
    data: dict[str, Any] = field(default_factory=dict)

    def trial_data(self, base: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's config data: the base config, the budget, then the sampled values.

        :param base: the base config as plain data (``RunConfig.to_dict()``)
        :param values: dotted key -> config value
        :return: data for :func:`config_from_dict`
        """
        overrides = [f"run.{key}={json.dumps(value)}" for key, value in self.budget.items()]
        overrides += [f"{key}={json.dumps(value)}" for key, value in values.items()]
        return apply_overrides(base, overrides)


def _param(name: str, spec: Any, where: str) -> ParamSpec:
    section = name.split(".", 1)[0]
    if "." not in name or section not in PARAM_SECTIONS:
        raise ConfigError(
            f"{where}: {name!r} must be a dotted config key in one of the sections {', '.join(PARAM_SECTIONS)} "
            "(e.g. td3.learning_rate)"
        )
    spec = _mapping(spec, where)
    kind = spec.get("type")
    kinds = ("float", "int", "categorical")
    if kind not in kinds:
        raise ConfigError(f"{where}.type={kind!r} is not one of {', '.join(kinds)}")
    if kind == "categorical":
        _check_keys(spec, ("type", "choices"), where)
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}.choices={choices!r}: expected a non-empty list of values")
        labels = [json.dumps(c, sort_keys=True) for c in choices]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}.choices={choices!r} lists a value twice")
        return ParamSpec(name, kind, choices=list(choices))
    _check_keys(spec, ("type", "low", "high", "log", "step"), where)
    integer = kind == "int"
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{where}: {kind} parameter needs 'low' and 'high'")
    low, high = _number(spec["low"], f"{where}.low", integer), _number(spec["high"], f"{where}.high", integer)
    if not low < high:
        raise ConfigError(f"{where}: empty range low={low!r}, high={high!r}: allowed low < high")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log={log!r} is not true or false")
    step = None if spec.get("step") is None else _number(spec["step"], f"{where}.step", integer)
    if step is not None and step <= 0:
        raise ConfigError(f"{where}.step={step!r} is out of range: allowed > 0")
    if log and step is not None and not (integer and step == 1):
        raise ConfigError(f"{where}: log=true and step={step!r} cannot be combined (Optuna samples one or the other)")
    if log and low <= (0 if not integer else 0.5):
        allowed = ">= 1" if integer else "> 0"
        raise ConfigError(f"{where}.low={low!r}: a log scale needs positive bounds: allowed low {allowed}")
    return ParamSpec(name, kind, low, high, log, step)


def space_from_dict(
    data: Mapping[str, Any] | None, base: RunConfig | Mapping[str, Any], source: str = "<dict>"
) -> SearchSpace:
    """Parse and check a search space against a base config.

    Every bound and every choice is set on the base config alone and built into a :class:`RunConfig`, so an unknown
    key, a value of the wrong type or out of its field's range fails here, naming the file and the key.

    :param data: the parsed YAML: ``params`` (required), ``budget``, ``pruning``, ``failures``
    :param base: the base run config (or its ``to_dict()``)
    :param source: name of the origin, used in messages
    :return: the checked space
    :raises ConfigError: naming the file, the key, the value and what is allowed
    """
    data = dict(_mapping(data, f"{source}: the top level"))
    _check_keys(data, ("params", "budget", "pruning", "failures"), source)
    base_data = base.to_dict() if isinstance(base, RunConfig) else dict(base)
    params_data = _mapping(data.get("params"), f"{source}: params")
    if not params_data:
        raise ConfigError(f"{source}: params is empty; name at least one parameter, e.g. td3.learning_rate")
    params = {str(name): _param(str(name), spec, f"{source}: params.{name}") for name, spec in params_data.items()}

    budget = dict(_mapping(data.get("budget"), f"{source}: budget"))
    _check_keys(budget, BUDGET_KEYS, f"{source}: budget")
    space = SearchSpace(params, budget, source=source, data=json.loads(json.dumps(data)))
    try:
        run = config_from_dict(space.trial_data(base_data, {}), source=f"{source}: budget").run
    except ConfigError as error:
        raise ConfigError(f"{source}: budget: {error}") from None
    if run.eval_freq < 1 or run.total_timesteps % run.eval_freq:
        raise ConfigError(
            f"{source}: budget: eval_freq={run.eval_freq} must be >= 1 and divide total_timesteps={run.total_timesteps}, "
            "so that the objective (the last evaluation) is measured at the end of the budget"
        )
    for name, spec in params.items():
        for value in spec.probes():
            where = f"{source}: params.{name}"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    config_from_dict(space.trial_data(base_data, {name: value}), source=where)
            except ConfigError as error:
                raise ConfigError(f"{where}: the value {value!r} is not valid in the base config: {error}") from None

    space.pruning = _pruning(data.get("pruning"), source)
    space.failures = _failures(data.get("failures"), source)
    return space


def _pruning(data: Any, source: str) -> PruningSettings:
    """Parse the ``pruning:`` section."""
    pruning = dict(_mapping(data, f"{source}: pruning"))
    _check_keys(pruning, ("health", "max_nonfinite_skips", "median"), f"{source}: pruning")
    health = pruning.get("health", True)
    if isinstance(health, bool):
        checks = list(HEALTH_CHECKS) if health else []
    elif isinstance(health, list) and all(c in HEALTH_CHECKS for c in health):
        checks = list(health)
    else:
        raise ConfigError(f"{source}: pruning.health={health!r}: allowed true, false or a list of {', '.join(HEALTH_CHECKS)}")
    skips = _number(pruning.get("max_nonfinite_skips", 0), f"{source}: pruning.max_nonfinite_skips", integer=True)
    if skips < 0:
        raise ConfigError(f"{source}: pruning.max_nonfinite_skips={skips} is out of range: allowed >= 0")
    median = None
    median_data = pruning.get("median")
    if median_data is not None and median_data is not False:
        median_data = {} if median_data is True else _mapping(median_data, f"{source}: pruning.median")
        keys = [f.name for f in dataclasses.fields(MedianSettings)]
        _check_keys(median_data, keys, f"{source}: pruning.median")
        values = {k: int(_number(v, f"{source}: pruning.median.{k}", integer=True)) for k, v in median_data.items()}
        for key, value in values.items():
            if value < (1 if key == "interval_steps" else 0):
                allowed = ">= 1" if key == "interval_steps" else ">= 0"
                raise ConfigError(f"{source}: pruning.median.{key}={value} is out of range: allowed {allowed}")
        median = MedianSettings(**values)
    return PruningSettings(checks, int(skips), median)


def _failures(data: Any, source: str) -> FailureSettings:
    """Parse the ``failures:`` section."""
    failures = dict(_mapping(data, f"{source}: failures"))
    keys = [f.name for f in dataclasses.fields(FailureSettings)]
    _check_keys(failures, keys, f"{source}: failures")
    parsed: dict[str, Any] = {}
    for key, value in failures.items():
        if key == "grace_period" and value is None:
            parsed[key] = None
            continue
        integer = key in ("max_retry", "max_consecutive_errors")
        parsed[key] = _number(value, f"{source}: failures.{key}", integer)
        low_ok = parsed[key] >= 0 if key == "max_retry" else parsed[key] > 0
        if not low_ok:
            allowed = ">= 0" if key == "max_retry" else "> 0"
            raise ConfigError(f"{source}: failures.{key}={value!r} is out of range: allowed {allowed}")
    failures_settings = FailureSettings(**parsed)
    if failures_settings.grace <= failures_settings.heartbeat_interval:
        raise ConfigError(
            f"{source}: failures.grace_period={failures_settings.grace} must exceed heartbeat_interval="
            f"{failures_settings.heartbeat_interval}, or live trials would be failed"
        )
    return failures_settings


def load_space(path: str | Path, base: RunConfig | Mapping[str, Any]) -> SearchSpace:
    """Load a search-space YAML file and check it against the base config (see :func:`space_from_dict`).

    :param path: the YAML file
    :param base: the base run config
    :return: the checked space
    :raises ConfigError: for a missing file, invalid YAML, unknown keys, empty ranges or values the config rejects
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search-space file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    return space_from_dict(data, base, source=str(path))


# --------------------------------------------------------------------------------------------------------- pruning


def _find_callback(root: Any, cls: type) -> Any:
    """The first callback of type ``cls`` in a tree of CallbackLists (depth first), or None."""
    if isinstance(root, cls):
        return root
    for child in [*getattr(root, "callbacks", []), getattr(root, "callback", None)]:
        if child is not None and child is not root:
            found = _find_callback(child, cls)
            if found is not None:
                return found
    return None


def health_failure(
    health: TrainingHealthCallback, stats: Mapping[str, float], checks: Sequence[str], max_nonfinite_skips: int = 0
) -> tuple[str, int, str] | None:
    """The first health failure among ``checks``, if any.

    :param health: the run's health callback
    :param stats: the model's ``last_train_stats`` (for the non-finite skips)
    :param checks: names from :data:`HEALTH_CHECKS`
    :param max_nonfinite_skips: non-finite updates tolerated
    :return: (check, timestep, reason) or None
    """
    alarms = {
        "q_bound": health.q_values.diverged_at_step,
        "actor_saturation": health.saturation.saturated_at_step,
        "episode_length": health.episodes.collapsed_at_step,
        "grad_clip": health.gradients.violated_at_step,
    }
    for check in checks:
        if check == "nonfinite_updates":
            skips = int(stats.get("nonfinite_skips", 0))
            if skips > max_nonfinite_skips:
                reason = f"{skips} non-finite updates skipped (tolerated: {max_nonfinite_skips})"
                return check, health.num_timesteps, reason
            continue
        step = alarms[check]
        if step is None:
            continue
        verdicts = health.verdict()
        keys = ["actor_grad_clip", "critic_grad_clip"] if check == "grad_clip" else [check]
        details = [verdicts[k].detail for k in keys if verdicts[k].passed is False] or [f"{check} alarm"]
        return check, int(step), f"{check}: {details[0]}"
    return None


class HealthPruningCallback(BaseCallback):
    """Stop a trial at its first health failure, and report each evaluation's mean return to Optuna.

    It reads the run's own :class:`TrainingHealthCallback` and :class:`DrivingEvalCallback` (found in the callback
    tree of ``learn()``), so the verdicts that prune the trial are those of its report. After ``learn()``,
    :attr:`pruned` holds ``(kind, check, timestep, reason)`` when training was stopped (kind ``health`` or
    ``median``).

    :param trial: the Optuna trial
    :param checks: health checks that prune (names from :data:`HEALTH_CHECKS`)
    :param max_nonfinite_skips: non-finite updates tolerated
    :param total_timesteps: the trial's budget (no median pruning at its last evaluation)
    """

    def __init__(
        self, trial: optuna.Trial, checks: Sequence[str], max_nonfinite_skips: int = 0, total_timesteps: int | None = None
    ) -> None:
        super().__init__()
        self.trial, self.checks, self.max_nonfinite_skips = trial, list(checks), max_nonfinite_skips
        self.total_timesteps = total_timesteps
        self.pruned: tuple[str, str, int, str] | None = None
        self.reported: list[tuple[int, float]] = []
        self._health: TrainingHealthCallback | None = None
        self._evaluation: DrivingEvalCallback | None = None

    def _locate(self) -> None:
        from sb3_carla_td3.callbacks import TrainingHealthCallback
        from sb3_carla_td3.validation.evaluation import DrivingEvalCallback

        root = self.locals.get("callback")
        if self._health is None:
            self._health = _find_callback(root, TrainingHealthCallback)
        if self._evaluation is None:
            self._evaluation = _find_callback(root, DrivingEvalCallback)

    def _judge(self) -> bool:
        """Check health and new evaluations; return False (and set :attr:`pruned`) to stop."""
        if self.pruned is not None:
            return False
        if self._health is not None and self.checks:
            stats = getattr(self.model, "last_train_stats", {}) or {}
            failure = health_failure(self._health, stats, self.checks, self.max_nonfinite_skips)
            if failure is not None:
                self.pruned = ("health", *failure)
                return False
        done = {step for step, _ in self.reported}
        results = self._evaluation.results if self._evaluation is not None else []
        for result in results:
            step = int(result["timestep"])
            if step in done:
                continue
            value = float(result["mean_return"])
            self.trial.report(value, step)
            self.reported.append((step, value))
            final = self.total_timesteps is not None and step >= self.total_timesteps
            if not final and self.trial.should_prune():
                reason = f"median: evaluation return {value:.4g} at timestep {step} below the median of earlier trials"
                self.pruned = ("median", "median", step, reason)
                return False
        return True

    def _on_step(self) -> bool:
        if self._health is None or self._evaluation is None:
            self._locate()
            missing = [name for name, found in (("TrainingHealthCallback", self._health), ("DrivingEvalCallback",
                       self._evaluation)) if found is None]  # fmt: skip
            if missing:
                raise RuntimeError(f"HealthPruningCallback: no {' or '.join(missing)} among the callbacks of learn()")
        return self._judge()

    def _on_training_end(self) -> None:
        self._judge()


# --------------------------------------------------------------------------------------------------------- storage


def _mask(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _retrying(make: Callable[[], Any], attempts: int = 6) -> Any:
    """Call ``make`` again after a short pause when it fails (workers racing to create the same tables or study)."""
    for attempt in range(attempts):
        try:
            return make()
        except Exception:  # sqlalchemy's errors differ by driver; the last attempt raises
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + 0.5 * attempt + (os.getpid() % 7) / 10)
    raise AssertionError("unreachable")


def storage_url(storage: str | None, study_dir: Path) -> str:
    """:return: ``storage``, or the default SQLite file in ``study_dir``"""
    return storage if storage else f"sqlite:///{(study_dir / 'study.db').resolve()}"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL.

    :param url: ``journal:PATH`` (or a path ending in ``.log``/``.journal``): a journal file, for a shared
        filesystem; ``sqlite:///PATH``; ``postgresql://USER@HOST:PORT/DB`` or any SQLAlchemy URL Optuna accepts
    :return: the storage
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url.startswith("journal:") or ("://" not in url and url.endswith((".log", ".journal"))):
        path = url.removeprefix("journal:")
        path = path[2:] if path.startswith("//") else path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(path))
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return _retrying(lambda: optuna.storages.RDBStorage(url, engine_kwargs=kwargs))


def _open_study(
    url: str, name: str, sampler: optuna.samplers.BaseSampler | None = None, pruner: optuna.pruners.BasePruner | None = None
) -> optuna.Study:
    import optuna

    storage = make_storage(url)
    return _retrying(
        lambda: optuna.create_study(
            storage=storage, study_name=name, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True
        )
    )


# ------------------------------------------------------------------------------------------------------ the search


@dataclass
class TuneResult:
    """What :func:`tune` leaves behind.

    :param study: the Optuna study
    :param study_dir: the study folder (trial run directories, study.json, the default SQLite file)
    :param storage: the storage URL (password masked)
    :param finished: COMPLETE + PRUNED trials in the study
    :param ran: trial numbers this call ran
    """

    study: optuna.Study
    study_dir: Path
    storage: str
    finished: int
    ran: list[int]


class SurplusTrial(RuntimeError):
    """A worker started a trial beyond the study's ``n_trials`` (a race between workers); it is ended at once."""


def worker_name() -> str:
    """:return: ``host:pid`` of this process"""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def heartbeat(study: optuna.Study, trial_id: int, interval: float) -> Iterator[None]:
    """Write the trial's ``heartbeat`` user attribute (epoch seconds) every ``interval`` s while the block runs.

    :param study: the study
    :param trial_id: the trial's storage id
    :param interval: seconds between beats
    """
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
            except Exception:  # a finished trial or a storage hiccup: the next beat retries
                pass
            if stop.wait(interval):
                return

    study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())
    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def fail_stale_trials(study: optuna.Study, failures: FailureSettings) -> list[int]:
    """Mark FAIL every RUNNING trial whose heartbeat is older than the grace period, and re-queue its parameters.

    :param study: the study
    :param failures: grace period and retries
    :return: numbers of the trials this call failed
    """
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage, now, failed = study._storage, time.time(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        start = trial.datetime_start.timestamp() if trial.datetime_start else now
        last = float(trial.user_attrs.get("heartbeat", start))
        if now - last <= failures.grace:
            continue
        worker = trial.user_attrs.get("worker", "?")
        silence = f"no heartbeat for {now - last:.0f} s (grace {failures.grace:g} s)"
        reason = f"{silence}: worker {worker} died (killed, out of memory, machine lost)"
        try:
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            if not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker failed it first, or it just finished
        failed.append(trial.number)
        retry = int(trial.user_attrs.get("retry", 0)) + 1
        if retry <= failures.max_retry:
            root = int(trial.user_attrs.get("retry_root", trial.number))
            attrs = {"retry": retry, "retry_of": trial.number, "retry_root": root}
            study.enqueue_trial(dict(trial.params), user_attrs=attrs)
    return failed


def _finished(study: optuna.Study) -> tuple[int, int, int]:
    """:return: (COMPLETE + PRUNED, RUNNING, WAITING) trial counts"""
    from optuna.trial import TrialState

    counts = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state] += 1
    return counts[TrialState.COMPLETE] + counts[TrialState.PRUNED], counts[TrialState.RUNNING], counts[TrialState.WAITING]


def _trial_report(result: RunResult, number: int, pruned: tuple[str, str, int, str] | None) -> PhaseReport:
    """The trial's report.md and plots: phase 3's table and sections, titled for the study."""
    from sb3_carla_td3.validation import phases
    from sb3_carla_td3.validation.report import PhaseReport, Row, fmt, phase1_rows

    verdicts = result.health.verdict()
    rows = phase1_rows(verdicts, result.model.actor_grad_clip, result.model.critic_grad_clip)
    evaluations = phases.load_evaluations(result.run_dir)
    if evaluations:
        first, last = evaluations[0], evaluations[-1]
        measured = f"{fmt(first['mean_return'])} -> {fmt(last['mean_return'])}"
        detail = f"{len(evaluations)} evaluations, at timesteps {first['timestep']}..{last['timestep']}"
        passed = last["mean_return"] > first["mean_return"] if len(evaluations) > 1 else None
        rows.append(Row("Evaluation return (deterministic)", "increasing", measured, passed, "", detail))
    status = f"pruned at {pruned[2]}: {pruned[0]}" if pruned else result.status
    title = f"Tuning trial {number}: TD3CNN on {result.config.env.name}, {result.model.num_timesteps} steps ({status})"
    report = PhaseReport(title, rows)
    if pruned is not None:
        report.sections.append(("Pruned", pruned[3]))
    return phases._finish(result, report)


def _objective(
    study: optuna.Study, base: dict[str, Any], space: SearchSpace, study_dir: Path, n_trials: int, verbose: int, ran: list[int]
) -> Callable[[optuna.Trial], float]:
    from optuna.trial import TrialState

    from sb3_carla_td3.validation.phases import load_evaluations
    from sb3_carla_td3.validation.runner import train

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker_name())
        claimed = sorted(
            t.number
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        )
        if trial.number in claimed and claimed.index(trial.number) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number} is beyond n_trials={n_trials} (started by a race); not run")
        ran.append(trial.number)
        values = {name: spec.suggest(trial) for name, spec in space.params.items()}
        run_dir = study_dir / TRIAL_DIR.format(number=trial.number)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                config = config_from_dict(space.trial_data(base, values), source=f"{space.source} trial {trial.number}")
        except ConfigError as error:  # a combination of valid values that the config rejects (buffer < batch)
            _prune(trial, "invalid_config", "config", 0, f"invalid config: {error}")
        config.run = dataclasses.replace(config.run, progress_bar=False)
        trial.set_user_attr("config", json.loads(json.dumps(config.to_dict())))
        pruning = HealthPruningCallback(
            trial, space.pruning.health, space.pruning.max_nonfinite_skips, config.run.total_timesteps
        )
        with heartbeat(study, trial._trial_id, space.failures.heartbeat_interval):
            try:
                result = train(config, run_dir, callbacks=[pruning], verbose=max(verbose - 1, 0))
                _trial_report(result, trial.number, pruning.pruned)
            except Exception as error:
                trial.set_user_attr("error", f"{type(error).__name__}: {error}")
                raise
        if pruning.pruned is not None:
            _prune(trial, *pruning.pruned)
        if result.status == "interrupted":
            raise KeyboardInterrupt
        evaluations = load_evaluations(run_dir)
        if not evaluations or evaluations[-1]["timestep"] < config.run.total_timesteps:
            _prune(trial, "stopped", "run", result.model.num_timesteps, f"training ended early ({result.status})")
        value = float(evaluations[-1]["mean_return"])
        if verbose:
            print(f"trial {trial.number}: {value:.4g}  {values}")
        return value

    return objective


def _prune(trial: optuna.Trial, kind: str, check: str, timestep: int, reason: str) -> NoReturn:
    import optuna

    for key, value in (("prune_kind", kind), ("prune_check", check), ("prune_timestep", timestep), ("prune_reason", reason)):
        trial.set_user_attr(key, value)
    raise optuna.TrialPruned(reason)


def _same(stored: Any, new: Any) -> bool:
    return json.dumps(stored, sort_keys=True) == json.dumps(json.loads(json.dumps(new)), sort_keys=True)


def tune(
    config: RunConfig | str | Path,
    space: SearchSpace | str | Path | Mapping[str, Any],
    n_trials: int,
    storage: str | None = None,
    study_name: str | None = None,
    study_dir: str | Path | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    verbose: int = 0,
) -> TuneResult:
    """Run (or continue) a study until it holds ``n_trials`` finished (COMPLETE or PRUNED) trials.

    Start the same call on many processes or machines with one ``storage``: they share the work, no trial runs
    twice, and a trial whose worker died is failed after the grace period and its parameters run again.

    :param config: the base run config, or its YAML file
    :param space: the search space, its YAML file, or its parsed data
    :param n_trials: finished trials the study must hold (all workers together)
    :param storage: Optuna storage URL (see :func:`make_storage`); None: SQLite ``study.db`` in the study folder
    :param study_name: the study's name; None: ``tune-<base config file stem>``
    :param study_dir: folder of the trial run directories; None: ``<run.output_dir>/<study_name>``
    :param timeout: seconds after which this worker starts no new trial; None: no limit
    :param seed: seed of the TPE sampler (give each worker its own); None: random
    :param verbose: 1 prints each trial's result, 2 also SB3's logs
    :return: the study and where it lives
    :raises ConfigError: for a bad config or space, or a study that exists with another base config or space
    """
    import optuna

    if n_trials < 1:
        raise ConfigError(f"n_trials={n_trials} is out of range: allowed >= 1")
    base_config = load_config(config) if isinstance(config, (str, Path)) else config
    base = json.loads(json.dumps(base_config.to_dict()))
    if isinstance(space, (str, Path)):
        space = load_space(space, base)
    elif not isinstance(space, SearchSpace):
        space = space_from_dict(space, base)
    stem = Path(base_config.source).stem if base_config.source and Path(base_config.source.split(" ")[0]).suffix else "study"
    study_name = study_name or f"tune-{stem}"
    study_dir = Path(study_dir) if study_dir is not None else Path(base_config.run.output_dir) / study_name
    study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, study_dir)
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    median = space.pruning.median
    pruner = (
        optuna.pruners.MedianPruner(median.n_startup_trials, median.n_warmup_steps, median.interval_steps)
        if median is not None
        else optuna.pruners.NopPruner()
    )
    study = _open_study(url, study_name, optuna.samplers.TPESampler(seed=seed), pruner)
    for key, value in (("base_config", base), ("space", space.data)):
        stored = study.user_attrs.get(key)
        if stored is None:
            study.set_user_attr(key, value)
        elif not _same(stored, value):
            raise ConfigError(
                f"study {study_name!r} in {_mask(url)} was started with another {key.replace('_', ' ')}; "
                "use the same files to continue it, or a new --study-name"
            )
    info = {"study_name": study_name, "storage": _mask(url), "n_trials": n_trials, "space": space.source,
            "base_config": base_config.source}  # fmt: skip
    (study_dir / STUDY_FILE).write_text(json.dumps(info, indent=1))

    ran: list[int] = []
    objective = _objective(study, base, space, study_dir, n_trials, verbose, ran)
    deadline = None if timeout is None else time.monotonic() + timeout
    errors = 0
    while True:
        fail_stale_trials(study, space.failures)
        finished, running, waiting = _finished(study)
        if finished >= n_trials or (deadline is not None and time.monotonic() >= deadline):
            break
        if finished + running >= n_trials and not waiting:
            time.sleep(min(space.failures.poll_interval, space.failures.heartbeat_interval))
            continue  # the last trials run elsewhere: wait for them, or for their heartbeat to stop
        count = len(ran)
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
        study.optimize(objective, n_trials=1, timeout=remaining, catch=(Exception,), gc_after_trial=True)
        if len(ran) == count:
            continue  # a surplus trial
        last = study._storage.get_trial(study._storage.get_trial_id_from_study_id_trial_number(study._study_id, ran[-1]))
        errors = errors + 1 if last.state == optuna.trial.TrialState.FAIL else 0
        if errors >= space.failures.max_consecutive_errors:
            raise RuntimeError(
                f"{errors} trials in a row raised in this worker; the last, trial {last.number}: "
                f"{last.user_attrs.get('error', last.system_attrs.get('fail_reason', '?'))}"
            )
    finished, _, _ = _finished(study)
    return TuneResult(study, study_dir, _mask(url), finished, ran)


# ---------------------------------------------------------------------------------------------------------- report


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _plot(name: str, out_dir: Path, draw: Callable[[], Any]) -> Path | None:
    """Save one Optuna matplotlib plot as PNG; None when Optuna cannot draw it (too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = draw()
    except (ValueError, RuntimeError, ZeroDivisionError):
        plt.close("all")
        return None
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(10, 6)
    figure.tight_layout()
    path = out_dir / f"{name}.png"
    figure.savefig(path, dpi=90)
    plt.close("all")
    return path


def tune_report(study_dir: str | Path, storage: str | None = None, study_name: str | None = None, top: int = 10) -> Path:
    """Write a study's report: best trials, importances, pruned and failed trials, plots, and the best config.

    :param study_dir: the study folder (its study.json names the storage and the study); the report goes there
    :param storage: storage URL (None: from study.json; needed where it holds a masked password)
    :param study_name: study name (None: from study.json)
    :param top: rows of the best-trials table
    :return: the report.md path
    :raises ConfigError: when the study cannot be found
    """
    import optuna
    from optuna.trial import TrialState

    study_dir = Path(study_dir)
    info_path = study_dir / STUDY_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    storage = storage or info.get("storage") or (storage_url(None, study_dir) if (study_dir / "study.db").is_file() else None)
    study_name = study_name or info.get("study_name")
    if not storage or not study_name:
        raise ConfigError(f"{study_dir} has no {STUDY_FILE}: pass --storage URL and --study-name NAME")
    if ":***@" in storage:
        raise ConfigError(f"{info_path} holds the storage URL without its password: pass --storage URL")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    except KeyError as error:
        raise ConfigError(f"no study {study_name!r} in {_mask(storage)}") from error
    study_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    states = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -float(t.value or 0))
    names = sorted({name for t in trials for name in t.params})
    sections: list[tuple[str, str]] = []
    counts = ", ".join(f"{k} {v}" for k, v in states.items() if v)
    sections.append(("Study", f"- name: {study_name}\n- storage: {_mask(storage)}\n- trials: {counts or 'none'}"))

    def seconds(trial: optuna.trial.FrozenTrial) -> str:
        return f"{trial.duration.total_seconds():.0f}" if trial.duration else "-"

    rows = [[t.number, t.value, *(t.params.get(n, "-") for n in names), seconds(t)] for t in complete[:top]]
    best = _table(["trial", "eval return", *names, "seconds"], rows) if rows else "No trial completed yet."
    sections.append((f"Best trials (top {top}, mean deterministic evaluation return)", best))

    importances = "Needs at least two completed trials."
    if len(complete) >= 2 and names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = optuna.importance.get_param_importances(study)
            importances = _table(["parameter", "importance (fANOVA)"], [[k, v] for k, v in scores.items()])
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            importances = f"Not computable: {error}"
    sections.append(("Parameter importance", importances))

    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    pruned_rows = [
        [
            t.number,
            t.user_attrs.get("prune_kind", "-"),
            t.user_attrs.get("prune_timestep", "-"),
            t.user_attrs.get("prune_reason", "-"),
        ]
        for t in pruned
    ]
    sections.append(
        ("Pruned trials", _table(["trial", "pruned by", "timestep", "reason"], pruned_rows) if pruned else "None.")
    )
    failed = [t for t in trials if t.state == TrialState.FAIL]
    retried = {t.user_attrs.get("retry_of"): t.number for t in trials if "retry_of" in t.user_attrs}
    failed_rows = [
        [
            t.number,
            "surplus (race between workers, not run)"
            if t.user_attrs.get("surplus")
            else t.user_attrs.get("fail_reason") or t.user_attrs.get("error") or t.system_attrs.get("fail_reason", "-"),
            retried.get(t.number, "-"),
        ]
        for t in failed
    ]
    sections.append(("Failed trials", _table(["trial", "reason", "retried as"], failed_rows) if failed else "None."))

    from optuna.visualization import matplotlib as optuna_plots

    plots = [
        _plot("optimization_history", study_dir, lambda: optuna_plots.plot_optimization_history(study)),
        _plot("parallel_coordinate", study_dir, lambda: optuna_plots.plot_parallel_coordinate(study)),
        _plot("param_importances", study_dir, lambda: optuna_plots.plot_param_importances(study))
        if len(complete) >= 2 and names
        else None,
    ]
    drawn = [p for p in plots if p is not None]
    sections.append(("Plots", "\n".join(f"![{p.stem}]({p.name})" for p in drawn) or "Too few trials to draw."))

    if complete:
        trial = complete[0]
        data = dict(trial.user_attrs["config"])
        base = study.user_attrs.get("base_config", {})
        data["run"] = {**data["run"], "progress_bar": base.get("run", {}).get("progress_bar", True)}
        config = config_from_dict(data, source=f"study {study_name} trial {trial.number}")
        path = config.save(study_dir / BEST_CONFIG_FILE)
        header = (
            f"# Best trial {trial.number} of study {study_name}: eval return {trial.value:.4g}\n# params: {trial.params}\n"
        )
        path.write_text(header + path.read_text())
        run = trial.user_attrs.get("run_dir", "-")
        sections.append(("Best config", f"[{BEST_CONFIG_FILE}]({BEST_CONFIG_FILE}) (trial {trial.number}, run directory "
                                        f"{run}); train it with `sb3-carla-td3 train --config {path}`"))  # fmt: skip
    text = [f"# Tuning study {study_name}", ""]
    for heading, body in sections:
        text += [f"## {heading}", "", body, ""]
    report = study_dir / REPORT_FILE
    report.write_text("\n".join(text))
    return report

"""The search space: a YAML file of searched config keys, the budget, pruning and failure settings, checked against
the base run config when it is loaded (see :mod:`sb3_carla_td3.tuning` for the file format)."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sb3_carla_td3.config import RunConfig, apply_overrides, config_from_dict
from sb3_carla_td3.config.loading import did_you_mean
from sb3_carla_td3.errors import ConfigError

if TYPE_CHECKING:
    import optuna

#: The health criteria that prune a trial (keys of ``TrainingHealthCallback.verdict()``, grad_clip for both nets,
#: plus non-finite updates skipped by TD3CNN).
HEALTH_CHECKS = (
    "q_bound", "actor_saturation", "actor_variation", "dormant_units", "episode_length", "grad_clip", "nonfinite_updates"
)  # fmt: skip
#: Config sections a search-space parameter may set.
PARAM_SECTIONS = ("td3", "encoder", "env", "monitor")
#: ``run`` keys the ``budget`` section may set on every trial.
BUDGET_KEYS = ("total_timesteps", "eval_freq", "eval_episodes", "checkpoint_freq", "threads", "device", "seed")


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
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(str(key), valid)}; allowed: {', '.join(valid)}")


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

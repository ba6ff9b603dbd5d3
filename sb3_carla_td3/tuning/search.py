"""The search loop: :func:`tune` runs trials (phase-3 runs) until the study holds ``n_trials`` finished ones."""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sb3_carla_td3.config import RunConfig, config_from_dict, load_config
from sb3_carla_td3.errors import ConfigError
from sb3_carla_td3.tuning.pruning import HealthPruningCallback
from sb3_carla_td3.tuning.space import SearchSpace, load_space, space_from_dict
from sb3_carla_td3.tuning.storage import (
    _finished,
    _mask,
    _open_study,
    fail_stale_trials,
    heartbeat,
    requeue,
    storage_url,
    worker_name,
)

if TYPE_CHECKING:
    import optuna

    from sb3_carla_td3.validation.report import PhaseReport
    from sb3_carla_td3.validation.runner import RunResult

#: The study folder's record of its name, storage (password masked), n_trials and files; read by tune_report.
STUDY_FILE = "study.json"
#: A trial's run directory in the study folder.
TRIAL_DIR = "trial_{number:04d}"


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


def _trial_report(result: RunResult, number: int, pruned: tuple[str, str, int, str] | None) -> PhaseReport:
    """The trial's report.md and plots: phase 3's table and sections, titled for the study."""
    from sb3_carla_td3.validation import phases
    from sb3_carla_td3.validation.report import PhaseReport, evaluation_row, phase1_rows

    verdicts = result.health.verdict()
    rows = phase1_rows(verdicts, result.model.actor_grad_clip, result.model.critic_grad_clip)
    evaluation = evaluation_row(phases.load_evaluations(result.run_dir))
    if evaluation is not None:
        rows.append(evaluation)
    status = f"pruned at {pruned[2]}: {pruned[0]}" if pruned else result.status
    title = f"Tuning trial {number}: TD3CNN on {result.config.env.name}, {result.model.num_timesteps} steps ({status})"
    report = PhaseReport(title, rows)
    if pruned is not None:
        report.sections.append(("Pruned", pruned[3]))
    return phases.finish_report(result, report)


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
                result = train(config, run_dir, verbose=max(verbose - 1, 0), callback_factories=[pruning.attach])
                _trial_report(result, trial.number, pruning.pruned)
            except Exception as error:
                trial.set_user_attr("error", f"{type(error).__name__}: {error}")
                raise
        if pruning.pruned is not None:
            _prune(trial, *pruning.pruned)
        if result.status == "interrupted":  # Ctrl-C or SIGTERM (a preempted machine): FAIL, and run it again later
            queued = requeue(study, trial.number, trial.params, trial.user_attrs, space.failures)
            again = "its parameters are queued again" if queued else f"not queued (max_retry {space.failures.max_retry})"
            reason = f"interrupted (Ctrl-C or SIGTERM) at timestep {result.model.num_timesteps}; {again}"
            trial.set_user_attr("fail_reason", reason)
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

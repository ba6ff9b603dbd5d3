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

# Names beyond __all__ are re-exported (``X as X``) so that every import of the former tuning.py module still works.
from sb3_carla_td3.tuning.pruning import HealthPruningCallback
from sb3_carla_td3.tuning.pruning import health_failure as health_failure
from sb3_carla_td3.tuning.report import BEST_CONFIG_FILE as BEST_CONFIG_FILE
from sb3_carla_td3.tuning.report import REPORT_FILE as REPORT_FILE
from sb3_carla_td3.tuning.report import tune_report
from sb3_carla_td3.tuning.search import STUDY_FILE as STUDY_FILE
from sb3_carla_td3.tuning.search import TRIAL_DIR as TRIAL_DIR
from sb3_carla_td3.tuning.search import SurplusTrial as SurplusTrial
from sb3_carla_td3.tuning.search import TuneResult, tune
from sb3_carla_td3.tuning.search import _objective as _objective
from sb3_carla_td3.tuning.space import BUDGET_KEYS as BUDGET_KEYS
from sb3_carla_td3.tuning.space import (
    HEALTH_CHECKS,
    FailureSettings,
    ParamSpec,
    PruningSettings,
    SearchSpace,
    load_space,
    space_from_dict,
)
from sb3_carla_td3.tuning.space import PARAM_SECTIONS as PARAM_SECTIONS
from sb3_carla_td3.tuning.space import MedianSettings as MedianSettings
from sb3_carla_td3.tuning.storage import fail_stale_trials as fail_stale_trials
from sb3_carla_td3.tuning.storage import heartbeat as heartbeat
from sb3_carla_td3.tuning.storage import make_storage
from sb3_carla_td3.tuning.storage import storage_url as storage_url
from sb3_carla_td3.tuning.storage import worker_name as worker_name

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

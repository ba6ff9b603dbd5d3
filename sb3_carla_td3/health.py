"""The training-health helpers' former home: every name that was importable from here still is.

Nothing in the package imports this module; each name lives with its concept. Verdicts, the warning and stopping
with a checkpoint: :mod:`sb3_carla_td3.callbacks.verdicts`; argument checks and finished episodes:
:mod:`sb3_carla_td3.callbacks.utils`; gradient norms measured by optimizer hooks:
:mod:`sb3_carla_td3.callbacks.gradient_norm`; the return trend: :mod:`sb3_carla_td3.callbacks.reward_trend`;
Q scoring: :mod:`sb3_carla_td3.q_scoring`.
"""

from __future__ import annotations

from sb3_carla_td3.callbacks.gradient_norm import ROLES, StepNormRecorder, clip_verdict, find_optimizers
from sb3_carla_td3.callbacks.reward_trend import RewardTrendCallback, reward_trend
from sb3_carla_td3.callbacks.utils import episode_infos, is_count, is_number, require
from sb3_carla_td3.callbacks.verdicts import (
    HealthVerdict,
    TrainingHealthWarning,
    format_verdicts,
    keep_training,
    warn_health,
)
from sb3_carla_td3.q_scoring import (
    QSample,
    critic_values,
    deterministic_actions,
    divergence_reason,
    preserved_rng,
    score_critic,
    stats_q_sample,
)

__all__ = [
    "ROLES",
    "HealthVerdict",
    "QSample",
    "RewardTrendCallback",
    "StepNormRecorder",
    "TrainingHealthWarning",
    "clip_verdict",
    "critic_values",
    "deterministic_actions",
    "divergence_reason",
    "episode_infos",
    "find_optimizers",
    "format_verdicts",
    "is_count",
    "is_number",
    "keep_training",
    "preserved_rng",
    "require",
    "reward_trend",
    "score_critic",
    "stats_q_sample",
    "warn_health",
]

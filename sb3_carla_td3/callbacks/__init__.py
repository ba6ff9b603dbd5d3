"""Training-health callbacks for any SB3 off-policy pipeline: gradient norms, Q-values, episode length, returns.

Each callback watches one signal and logs it under ``health/*`` through the model's logger. With TD3CNN (detected
by its ``last_train_stats``) they read the algorithm's per-update statistics; with plain TD3, DDPG, SAC or TQC they
measure by themselves (optimizer hooks, :class:`~sb3_carla_td3.callbacks.gradient_norm.StepNormRecorder`; critic
scoring, :mod:`sb3_carla_td3.q_scoring`). SB3 runs ``train()`` after a rollout, outside the callbacks: its effects
show at the next ``_on_step``, and those of the last call at ``_on_training_end``.

One module per signal: :mod:`~sb3_carla_td3.callbacks.gradient_norm`, :mod:`~sb3_carla_td3.callbacks.q_value`,
:mod:`~sb3_carla_td3.callbacks.episode_collapse`, :mod:`~sb3_carla_td3.callbacks.reward_trend`,
:mod:`~sb3_carla_td3.callbacks.actor_variation` and :mod:`~sb3_carla_td3.callbacks.saturation` (both for the actor),
bundled by :mod:`~sb3_carla_td3.callbacks.training_health`. What they share: their verdict, warning and stop
(:mod:`~sb3_carla_td3.callbacks.verdicts`) and argument checks (:mod:`~sb3_carla_td3.callbacks.utils`).
"""

from sb3_carla_td3.callbacks.actor_variation import ActorVariationCallback
from sb3_carla_td3.callbacks.dormant import DormantUnitCallback
from sb3_carla_td3.callbacks.episode_collapse import EpisodeCollapseCallback
from sb3_carla_td3.callbacks.gradient_norm import GradientNormCallback
from sb3_carla_td3.callbacks.q_value import QValueCallback
from sb3_carla_td3.callbacks.reward_trend import RewardTrendCallback
from sb3_carla_td3.callbacks.saturation import ActionSaturationCallback
from sb3_carla_td3.callbacks.training_health import TrainingHealthCallback
from sb3_carla_td3.callbacks.verdicts import HealthVerdict as HealthVerdict  # what verdict() returns, importable here too

__all__ = [
    "ActionSaturationCallback",
    "ActorVariationCallback",
    "DormantUnitCallback",
    "EpisodeCollapseCallback",
    "GradientNormCallback",
    "QValueCallback",
    "RewardTrendCallback",
    "TrainingHealthCallback",
]

"""All health checks in one callback, with their verdicts and a checkpointable state."""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from sb3_carla_td3.callbacks.actor_variation import ActorVariationCallback
from sb3_carla_td3.callbacks.dormant import DormantUnitCallback
from sb3_carla_td3.callbacks.episode_collapse import EpisodeCollapseCallback
from sb3_carla_td3.callbacks.gradient_norm import GradientNormCallback
from sb3_carla_td3.callbacks.q_value import QValueCallback
from sb3_carla_td3.callbacks.reward_trend import RewardTrendCallback
from sb3_carla_td3.callbacks.saturation import ActionSaturationCallback
from sb3_carla_td3.callbacks.verdicts import HealthVerdict, format_verdicts

#: Attributes of a check that wire it to one ``learn()`` call (BaseCallback's own, optimizer hooks), never saved.
_WIRING = frozenset(
    {"model", "n_calls", "num_timesteps", "verbose", "locals", "globals", "parent", "_recorder", "_optimizers", "_uses_stats"}
)


def _check_state(check: BaseCallback) -> dict[str, Any]:
    return {key: value for key, value in vars(check).items() if key not in _WIRING}


class TrainingHealthCallback(CallbackList):
    """All health checks in one callback for ``model.learn(callback=...)``, with a final :meth:`verdict`.

    Runs a :class:`GradientNormCallback`, a :class:`QValueCallback`, an :class:`EpisodeCollapseCallback`, a
    :class:`RewardTrendCallback`, an :class:`ActionSaturationCallback`, an :class:`ActorVariationCallback` and a
    :class:`DormantUnitCallback`, and stops training when one of them does (only those built with a stop option).

    :param gradients: the gradient-norm check; None: ``GradientNormCallback()``
    :param q_values: the Q-value check; None: ``QValueCallback()``
    :param episodes: the episode-length check; None: ``EpisodeCollapseCallback()``
    :param rewards: the return-trend check; None: ``RewardTrendCallback()``
    :param saturation: the actor-saturation check; None: ``ActionSaturationCallback()``
    :param variation: the blind-actor check; None: ``ActorVariationCallback()``
    :param dormant: the dead-encoder check (dormant units); None: ``DormantUnitCallback()``
    :param check_freq: env steps between the Q-value, saturation and blind-actor checks that this callback builds itself (those
        left None above); None: their defaults (50)
    """

    def __init__(
        self,
        gradients: GradientNormCallback | None = None,
        q_values: QValueCallback | None = None,
        episodes: EpisodeCollapseCallback | None = None,
        rewards: RewardTrendCallback | None = None,
        saturation: ActionSaturationCallback | None = None,
        check_freq: int | None = None,
        variation: ActorVariationCallback | None = None,
        dormant: DormantUnitCallback | None = None,
    ) -> None:
        self.gradients = GradientNormCallback() if gradients is None else gradients
        every = QValueCallback().check_freq if check_freq is None else check_freq
        self.q_values = QValueCallback(check_freq=every) if q_values is None else q_values
        self.episodes = EpisodeCollapseCallback() if episodes is None else episodes
        self.rewards = RewardTrendCallback() if rewards is None else rewards
        self.saturation = ActionSaturationCallback(check_freq=every) if saturation is None else saturation
        self.variation = ActorVariationCallback(check_freq=every) if variation is None else variation
        self.dormant = DormantUnitCallback() if dormant is None else dormant
        checks = [self.gradients, self.q_values, self.episodes, self.rewards, self.saturation, self.variation, self.dormant]
        super().__init__(checks)

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """What the checks have measured so far (alarms, peaks, baselines, windows), for a checkpoint.

        A resumed run restores it with :meth:`load_state_dict`, so that its report judges the whole run, not only the
        steps after the resume. Wiring that every ``learn()`` rebuilds (model, logger, optimizer hooks) is left out.

        :return: one picklable dict per check, keyed by attribute name (``"gradients"``, ``"q_values"``, ...)
        """
        return {name: _check_state(check) for name, check in self._checks().items()}

    def load_state_dict(self, state: dict[str, dict[str, Any]]) -> None:
        """Restore what :meth:`state_dict` returned (before ``learn()`` continues the run).

        :param state: the saved state; checks missing from it keep their fresh state
        """
        for name, check in self._checks().items():
            vars(check).update(state.get(name, {}))

    def _checks(self) -> dict[str, BaseCallback]:
        return {
            "gradients": self.gradients,
            "q_values": self.q_values,
            "episodes": self.episodes,
            "rewards": self.rewards,
            "saturation": self.saturation,
            "variation": self.variation,
            "dormant": self.dormant,
        }

    def verdict(self) -> dict[str, HealthVerdict]:
        """Judge every criterion on what was measured so far.

        :return: verdicts keyed ``"actor_grad_clip"``, ``"critic_grad_clip"``, ``"q_bound"``, ``"reward_trend"``,
            ``"episode_length"``, ``"actor_saturation"``, ``"actor_variation"``, ``"dormant_units"``
        """
        return self.gradients.verdicts() | {
            "q_bound": self.q_values.verdict(),
            "reward_trend": self.rewards.verdict(),
            "episode_length": self.episodes.verdict(),
            "actor_saturation": self.saturation.verdict(),
            "actor_variation": self.variation.verdict(),
            "dormant_units": self.dormant.verdict(),
        }

    def summary(self) -> str:
        """The verdicts as a plain-text table, one criterion per line (PASS / FAIL / N/A, value, threshold, detail).

        :return: the table
        """
        return format_verdicts(self.verdict())

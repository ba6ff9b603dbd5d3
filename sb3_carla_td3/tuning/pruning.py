"""Pruning a trial: its run's own health verdicts stop it at the first failure, evaluations feed the median pruner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from stable_baselines3.common.callbacks import BaseCallback

from sb3_carla_td3.train_stats import TrainStats, latest_train_stats

if TYPE_CHECKING:
    import optuna

    from sb3_carla_td3.callbacks import TrainingHealthCallback
    from sb3_carla_td3.validation.evaluation import DrivingEvalCallback


def health_failure(
    health: TrainingHealthCallback, stats: TrainStats | None, checks: Sequence[str], max_nonfinite_skips: int = 0
) -> tuple[str, int, str] | None:
    """The first health failure among ``checks``, if any.

    :param health: the run's health callback
    :param stats: the model's latest statistics (for the non-finite skips); None: none measured
    :param checks: names from :data:`HEALTH_CHECKS`
    :param max_nonfinite_skips: non-finite updates tolerated
    :return: (check, timestep, reason) or None
    """
    alarms = {
        "q_bound": health.q_values.diverged_at_step,
        "actor_saturation": health.saturation.saturated_at_step,
        "actor_variation": health.variation.blind_at_step,
        "dormant_units": health.dormant.dead_at_step if health.dormant.alarm else None,
        "episode_length": health.episodes.collapsed_at_step,
        "grad_clip": health.gradients.violated_at_step,
    }
    for check in checks:
        if check == "nonfinite_updates":
            skips = (stats.nonfinite_skips or 0) if stats is not None else 0
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

    It reads the run's own :class:`TrainingHealthCallback` and :class:`DrivingEvalCallback`, handed to it by
    :meth:`attach` (pass ``callback_factories=[pruning.attach]`` to :func:`~sb3_carla_td3.validation.runner.train`),
    so the verdicts that prune the trial are those of its report. After ``learn()``, :attr:`pruned` holds
    ``(kind, check, timestep, reason)`` when training was stopped (kind ``health`` or ``median``).

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

    def attach(self, health: TrainingHealthCallback, evaluation: DrivingEvalCallback | None) -> HealthPruningCallback:
        """Watch a run's health and evaluation callbacks (a :data:`~sb3_carla_td3.validation.runner.CallbackFactory`).

        :param health: the run's health callback
        :param evaluation: the run's evaluation callback (None: the run does not evaluate, which :meth:`_on_step`
            rejects: a trial needs evaluations for its objective)
        :return: this callback, to run beside them
        """
        self._health, self._evaluation = health, evaluation
        return self

    def _judge(self) -> bool:
        """Check health and new evaluations; return False (and set :attr:`pruned`) to stop."""
        if self.pruned is not None:
            return False
        if self._health is not None and self.checks:
            stats = latest_train_stats(self.model)
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
            missing = [name for name, found in (("TrainingHealthCallback", self._health), ("DrivingEvalCallback",
                       self._evaluation)) if found is None]  # fmt: skip
            raise RuntimeError(
                f"HealthPruningCallback: no {' or '.join(missing)} attached; pass its attach method in "
                "train(callback_factories=...), with run.eval_freq > 0"
            )
        return self._judge()

    def _on_training_end(self) -> None:
        self._judge()

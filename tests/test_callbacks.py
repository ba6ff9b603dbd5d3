"""Tests for sb3_carla_td3.callbacks: collapse, divergence, hook-measured norms, verdicts, SAC/TQC/DDPG/TD3CNN runs."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from sb3_contrib import TQC
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_carla_td3.callbacks import (
    ActionSaturationCallback,
    ActorVariationCallback,
    EpisodeCollapseCallback,
    GradientNormCallback,
    QValueCallback,
    RewardTrendCallback,
    TrainingHealthCallback,
)
from sb3_carla_td3.health import TrainingHealthWarning, divergence_reason, reward_trend, score_critic, stats_q_sample
from sb3_carla_td3.train_stats import TrainStats

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "monitor_existing_pipeline.py"


def tiny(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for a tiny, fast, seeded model (fresh dicts: SB3 writes into policy_kwargs)."""
    return {"policy_kwargs": {"net_arch": [16]}, "batch_size": 32, "seed": 0, "device": "cpu", **overrides}


class ScheduledEpisodeEnv(gym.Env):
    """1-D env whose episode ``k`` (0-based) lasts ``lengths(k)`` steps and pays ``reward(k)`` per step."""

    def __init__(self, long_episodes: int = 6, long_length: int = 20, short_length: int = 2, reward_drop: float = 0.0):
        super().__init__()
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.long_episodes, self.long_length, self.short_length = long_episodes, long_length, short_length
        self.reward_drop = reward_drop
        self.episode, self.t = -1, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        length = self.long_length if self.episode < self.long_episodes else self.short_length
        reward = 1.0 - self.reward_drop * self.episode
        return np.full(1, self.t / 100, dtype=np.float32), reward, False, self.t >= length, {}


class ExplodingCriticTD3(TD3):
    """TD3 whose critic output layers are multiplied by 10 after every train() call: Q grows like a real blow-up."""

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        super().train(gradient_steps, batch_size)
        with th.no_grad():
            for q_net in self.critic.q_networks:
                q_net[-1].weight.mul_(10.0)
                q_net[-1].bias.mul_(10.0)


def health_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, TrainingHealthWarning)]


def manual_norm_hooks(model: BaseAlgorithm) -> dict[str, list[float]]:
    """Register an independent step pre-hook per optimizer that sums squared grads in float64."""
    norms: dict[str, list[float]] = {"actor": [], "critic": []}

    def make_hook(name: str) -> Any:
        def hook(optimizer: th.optim.Optimizer, args: Any, kwargs: Any) -> None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norms[name].append(math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads)))

        return hook

    model.actor.optimizer.register_step_pre_hook(make_hook("actor"))
    model.critic.optimizer.register_step_pre_hook(make_hook("critic"))
    return norms


def test_episode_collapse_detected_within_window_and_stops() -> None:
    model = TD3("MlpPolicy", ScheduledEpisodeEnv(), **tiny(learning_starts=0, gradient_steps=0))
    callback = EpisodeCollapseCallback(window=3, baseline_episodes=3, patience=2, stop_on_collapse=True)
    with pytest.warns(TrainingHealthWarning, match="episode length collapsed"):
        model.learn(1000, callback=callback)
    # 6 episodes of 20 steps, then the collapse must fire by the (window + patience - 1)-th 2-step episode.
    assert callback.collapsed_at_step == 6 * 20 + (3 + 2 - 1) * 2
    assert model.num_timesteps == callback.collapsed_at_step


def test_episode_collapse_against_given_baseline_length() -> None:
    env = ScheduledEpisodeEnv(long_episodes=10**6)  # every episode lasts 20 steps
    model = TD3("MlpPolicy", env, **tiny(learning_starts=0, gradient_steps=0))
    callback = EpisodeCollapseCallback(window=2, baseline_length=100.0, patience=3)
    with pytest.warns(TrainingHealthWarning):
        model.learn(200, callback=callback)
    assert callback.baseline == 100.0
    assert callback.collapsed_at_step == (2 + 3 - 1) * 20


def test_episode_collapse_ignores_episodes_before_learning_starts() -> None:
    # The 20-step episodes and the first three 2-step ones end before learning starts: the baseline is 2 steps.
    model = TD3("MlpPolicy", ScheduledEpisodeEnv(), **tiny(learning_starts=6 * 20 + 3 * 2, gradient_steps=0))
    callback = EpisodeCollapseCallback(window=3, baseline_episodes=3, patience=2)
    model.learn(200, callback=callback)
    assert callback.baseline == pytest.approx(2.0)
    assert callback.collapsed_at_step is None


def test_episode_length_verdict_after_collapse() -> None:
    model = TD3("MlpPolicy", ScheduledEpisodeEnv(), **tiny(learning_starts=0, gradient_steps=0))
    health = TrainingHealthCallback(episodes=EpisodeCollapseCallback(window=3, baseline_episodes=3, patience=2))
    with pytest.warns(TrainingHealthWarning):
        model.learn(200, callback=health)
    verdict = health.verdict()["episode_length"]
    assert verdict.passed is False
    assert verdict.value == pytest.approx(2.0)  # rolling mean of three 2-step episodes
    assert verdict.threshold == pytest.approx(0.3 * 20.0)


def test_q_divergence_stops_training_and_saves_checkpoint(tmp_path: Path) -> None:
    model = ExplodingCriticTD3("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=50))
    checkpoint = tmp_path / "ckpt" / "diverged.zip"
    callback = QValueCallback(check_freq=5, stop_on_divergence=True, checkpoint_path=checkpoint)
    with pytest.warns(TrainingHealthWarning, match="Q divergence"):
        model.learn(5000, callback=callback)
    assert model.num_timesteps < 5000
    assert callback.diverged_at_step == model.num_timesteps
    assert callback.diverged_at_update == model._n_updates
    assert checkpoint.is_file()
    assert TD3.load(checkpoint, device="cpu").num_timesteps == model.num_timesteps


def test_q_bound_verdict_fails_with_the_numbers_after_divergence() -> None:
    model = ExplodingCriticTD3("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=50))
    health = TrainingHealthCallback(q_values=QValueCallback(check_freq=5, stop_on_divergence=True))
    with pytest.warns(TrainingHealthWarning):
        model.learn(5000, callback=health)
    verdict = health.verdict()["q_bound"]
    assert verdict.passed is False
    assert verdict.value > verdict.threshold
    assert verdict.threshold == pytest.approx(1.5 * health.q_values.max_abs_reward / (1 - 0.99) + 1.0)


def test_q_growth_test_fires_below_a_loose_bound() -> None:
    model = ExplodingCriticTD3("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=50))
    callback = QValueCallback(check_freq=1, margin=1e12, growth_window_steps=2, growth_floor=0.0, stop_on_divergence=True)
    with pytest.warns(TrainingHealthWarning, match="grew more than 10x"):
        model.learn(5000, callback=callback)
    assert callback.divergence_reason is not None and "grew" in callback.divergence_reason


def test_q_bound_threshold_uses_observed_reward() -> None:
    model = TD3("MlpPolicy", ScheduledEpisodeEnv(long_episodes=10**6), **tiny(learning_starts=20))
    callback = QValueCallback(check_freq=10)
    model.learn(60, callback=callback)
    verdict = callback.verdict()
    assert callback.max_abs_reward == 1.0
    assert verdict.threshold == pytest.approx(1.5 * 1.0 / (1 - 0.99) + 1.0)
    assert verdict.passed is True


def test_divergence_reason_flags_non_finite_q() -> None:
    assert "non-finite" in divergence_reason(math.nan, None, bound=10.0, floor=5.0, growth_factor=10.0)


def test_divergence_reason_ignores_growth_below_the_floor() -> None:
    assert divergence_reason(4.0, 0.01, bound=10.0, floor=5.0, growth_factor=10.0) is None


def test_hook_norms_match_manual_computation() -> None:
    model = TD3("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=50, gradient_steps=2))
    manual = manual_norm_hooks(model)
    callback = GradientNormCallback()
    model.learn(70, callback=callback)
    for role in ("actor", "critic"):
        assert callback.n_measurements[role] == len(manual[role]) > 0
        assert callback.max_norm[role] == pytest.approx(max(manual[role]), rel=1e-5)
    # The last train() call did 2 critic updates; they are read at training end.
    assert callback.last_norms["critic"] == pytest.approx(manual["critic"][-2:], rel=1e-5)


def test_hook_measures_gradients_after_clipping() -> None:
    model = TD3("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=50))
    critic_params = list(model.critic.parameters())

    def clip_first(optimizer: th.optim.Optimizer, args: Any, kwargs: Any) -> None:
        th.nn.utils.clip_grad_norm_(critic_params, 0.05)

    model.critic.optimizer.register_step_pre_hook(clip_first)  # registered before the callback's hook, so runs first
    callback = GradientNormCallback(critic_max_norm=0.05)
    model.learn(80, callback=callback)
    verdict = callback.verdicts()["critic_grad_clip"]
    assert verdict.passed is True
    assert verdict.threshold == 0.05
    assert 0 < verdict.value <= 0.05 * (1 + 1e-5)


def test_gradient_limit_violation_stops_training() -> None:
    model = TD3("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=50))
    callback = GradientNormCallback(critic_max_norm=1e-6, stop_on_violation=True)
    with pytest.warns(TrainingHealthWarning, match="critic gradient norm"):
        model.learn(1000, callback=callback)
    assert callback.violated_at_step == model.num_timesteps < 1000
    assert callback.verdicts()["critic_grad_clip"].passed is False


def test_gradient_hooks_removed_at_training_end() -> None:
    model = TD3("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=50))
    callback = GradientNormCallback()
    model.learn(60, callback=callback)
    measured = callback.n_measurements["critic"]
    model.learn(20, reset_num_timesteps=False)  # without the callback
    assert callback.n_measurements["critic"] == measured
    assert not model.critic.optimizer._optimizer_step_pre_hooks


def test_no_false_alarm_on_healthy_td3_pendulum() -> None:
    env = gym.make("Pendulum-v1", max_episode_steps=50)
    model = TD3("MlpPolicy", env, **tiny(learning_starts=100))
    health = TrainingHealthCallback(
        gradients=GradientNormCallback(stop_on_violation=True),
        q_values=QValueCallback(check_freq=20, stop_on_divergence=True),
        episodes=EpisodeCollapseCallback(window=2, baseline_episodes=2, patience=1, stop_on_collapse=True),
        saturation=ActionSaturationCallback(check_freq=20, patience_steps=60, stop_on_saturation=True),
        variation=ActorVariationCallback(warmup_steps=0, check_freq=20, patience_steps=60, stop_on_blind=True),
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.learn(300, callback=health)
    assert health_warnings(record) == []
    assert model.num_timesteps == 300
    verdicts = health.verdict()
    # N/A, never PASS, where the check cannot fail: SB3's TD3 has no clip limits; 6 episodes < the trend's 30; an
    # MLP has no conv layer to go dead.
    not_passed = {name: v.detail for name, v in verdicts.items() if v.passed is not True}
    assert list(not_passed) == ["actor_grad_clip", "critic_grad_clip", "reward_trend", "dormant_units"]
    assert all(verdicts[name].passed is None for name in not_passed)
    assert "no clip limit" in not_passed["actor_grad_clip"] and "fewer than 30 episodes" in not_passed["reward_trend"]
    assert "no conv layer" in not_passed["dormant_units"]


def test_verdict_without_training_reports_missing_data() -> None:
    health = TrainingHealthCallback()
    health.init_callback(TD3("MlpPolicy", "Pendulum-v1", **tiny()))
    verdicts = health.verdict()
    assert list(verdicts) == [
        "actor_grad_clip",
        "critic_grad_clip",
        "q_bound",
        "reward_trend",
        "episode_length",
        "actor_saturation",
        "actor_variation",
        "dormant_units",
    ]
    assert all(v.passed is None and v.value is None for v in verdicts.values())
    assert "N/A" in health.summary()


def test_grad_clip_verdict_with_and_without_limit() -> None:
    model = TD3("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=50))
    callback = GradientNormCallback(actor_max_norm=1e3)
    model.learn(70, callback=callback)
    actor, critic = callback.verdicts()["actor_grad_clip"], callback.verdicts()["critic_grad_clip"]
    assert (actor.passed, actor.value, actor.threshold) == (True, callback.max_norm["actor"], 1e3)
    # No limit: the check cannot fail, so it is N/A (never PASS), and says why with the norm it measured.
    assert (critic.passed, critic.value, critic.threshold) == (None, callback.max_norm["critic"], None)
    assert "no clip limit" in critic.detail and not critic.applies and actor.applies  # N/A by choice, not for want of data


def test_reward_trend_verdict_on_declining_returns() -> None:
    env = ScheduledEpisodeEnv(long_episodes=10**6, long_length=5, reward_drop=1.0)  # return of episode k: 5 (1 - k)
    model = TD3("MlpPolicy", env, **tiny(learning_starts=0, gradient_steps=0))
    callback = RewardTrendCallback(window=6)
    with pytest.warns(TrainingHealthWarning, match="returns degrading"):
        model.learn(30, callback=callback)
    returns = 5.0 * (1.0 - np.arange(6))
    expected_change = (returns[-2:].mean() - returns[:2].mean()) / returns.std()
    verdict = callback.verdict()
    assert callback.slope == pytest.approx(-5.0)
    assert (verdict.passed, verdict.threshold) == (False, -1.0)
    assert verdict.value == pytest.approx(expected_change)


def test_reward_trend_ignores_the_random_warm_up_episodes(recwarn) -> None:
    env = ScheduledEpisodeEnv(long_episodes=10**6, long_length=5, reward_drop=1.0)  # the same declining returns
    model = TD3("MlpPolicy", env, **tiny(learning_starts=20, gradient_steps=0))
    callback = RewardTrendCallback(window=3)
    model.learn(30, callback=callback)
    assert list(callback._returns) == [5.0 * (1 - 4), 5.0 * (1 - 5)]  # episodes ending at steps 25 and 30 only
    assert callback.verdict().passed is None
    assert not [w for w in recwarn if issubclass(w.category, TrainingHealthWarning)]


def test_reward_trend_is_zero_change_for_constant_returns() -> None:
    assert reward_trend([3.0] * 9) == (pytest.approx(0.0, abs=1e-12), 0.0)


@pytest.mark.parametrize("algorithm", [SAC, TQC, DDPG])
def test_pipeline_runs_with_health_callback(algorithm: type[BaseAlgorithm]) -> None:
    model = algorithm("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=100))
    health = TrainingHealthCallback(q_values=QValueCallback(check_freq=10))
    model.learn(150, callback=health)
    verdicts = health.verdict()
    assert verdicts["q_bound"].passed is True, verdicts["q_bound"]
    for name in ("actor_grad_clip", "critic_grad_clip"):  # measured, but SB3 sets no clip limit: N/A, not PASS
        assert verdicts[name].passed is None and verdicts[name].value is not None, verdicts[name]
    assert health.gradients.n_measurements["critic"] == model._n_updates
    assert health.q_values.last_sample.n_updates == model._n_updates  # the last train() call is judged at the end
    expects_target = algorithm is not TQC  # TQC's truncated-quantile target is not recomputed
    assert (health.q_values.last_sample.target_q_mean is not None) == expects_target


def test_td3cnn_stats_drive_the_callbacks() -> None:
    from sb3_carla_td3.td3_cnn import TD3CNN

    model = TD3CNN("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=50))
    health = TrainingHealthCallback(q_values=QValueCallback(check_freq=5))
    model.learn(100, callback=health)
    verdicts = health.verdict()
    assert verdicts["critic_grad_clip"].threshold == model.critic_grad_clip
    assert verdicts["actor_grad_clip"].threshold == model.actor_grad_clip
    # The max over every train() call bounds the last call's max from above and stays within the clip limit.
    assert model.last_train_stats.critic_grad_norm_post_max <= verdicts["critic_grad_clip"].value
    assert verdicts["critic_grad_clip"].value <= model.critic_grad_clip * (1 + 1e-4)
    assert verdicts["critic_grad_clip"].passed is True
    assert health.q_values.last_sample.n_updates == model.last_train_stats.n_updates
    assert verdicts["q_bound"].passed is True


def test_example_runs_td3_and_sac() -> None:
    spec = importlib.util.spec_from_file_location("monitor_existing_pipeline", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--timesteps", "150"]) == 0


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: EpisodeCollapseCallback(fraction=1.5), "fraction must be a float in \\(0, 1\\), got 1.5"),
        (lambda: EpisodeCollapseCallback(window=0), "window must be an int >= 1, got 0"),
        (lambda: QValueCallback(growth_factor=1.0), "growth_factor must be a float > 1 or None, got 1.0"),
        (lambda: QValueCallback(check_freq=2.5), "check_freq must be an int >= 1, got 2.5"),
        (lambda: GradientNormCallback(actor_max_norm=-1.0), "actor_max_norm must be a positive finite float"),
        (lambda: RewardTrendCallback(window=2), "window must be an int >= 3"),
    ],
)
def test_constructor_rejects_invalid_argument(factory: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        factory()


def test_policy_q_counts_in_the_magnitude_from_train_stats() -> None:
    # The original system's replay Q stayed at 40-90 while Q(s, pi(s)) reached 1e5-1e6: the latter must count.
    stats = TrainStats(q1_mean=50.0, q2_mean=60.0, q_max=90.0, q_min=40.0, n_updates=10)
    assert stats_q_sample(stats).q_abs_max == 90.0
    sample = stats_q_sample(stats.updated({"actor_q_mean": -1.8e6}))
    assert sample.q_abs_max == 1.8e6 and sample.policy_q_mean == -1.8e6


def test_score_critic_sees_a_critic_that_is_huge_only_on_the_actors_actions() -> None:
    model = TD3("MlpPolicy", "Pendulum-v1", **tiny(learning_starts=1000))
    model.learn(64)  # random actions in the buffer, never exactly the actor's constant 1.0
    model.actor.forward = lambda obs: th.ones(len(obs), 1)
    model.critic.forward = lambda obs, actions: (1e6 * (actions == 1.0).float(), 1e6 * (actions == 1.0).float())
    sample = score_critic(model, 32)
    assert sample is not None
    assert sample.q_max == 0.0
    assert sample.policy_q_mean == 1e6 and sample.q_abs_max == 1e6

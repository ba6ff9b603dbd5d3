"""Actor saturation: a tanh actor pinned at +-1 is flagged, for TD3CNN (train stats) and plain SB3 TD3 (replay scoring)."""

from __future__ import annotations

import pytest
import torch as th
from conftest import make_model
from stable_baselines3 import TD3

from sb3_carla_td3.callbacks import ActionSaturationCallback, ActorVariationCallback, TrainingHealthCallback
from sb3_carla_td3.callbacks.saturation import saturation_fraction
from sb3_carla_td3.health import TrainingHealthWarning


def pin_actor(actor_mu: th.nn.Sequential, value: float = 50.0) -> None:
    """Push the actor's last linear layer so far that tanh saturates for every input."""
    last = [m for m in actor_mu if isinstance(m, th.nn.Linear)][-1]
    with th.no_grad():
        last.weight.zero_()
        last.bias.fill_(value)


def test_saturation_fraction_counts_entries_beyond_0_99():
    assert saturation_fraction(th.tensor([[1.0, 0.5], [-0.995, 0.0]])) == pytest.approx(0.5)


def test_td3cnn_logs_the_share_of_saturated_actions():
    model = make_model(learning_starts=30, preact_penalty=0.0)  # plain TD3: the penalty would pull it back
    model.learn(40)
    assert 0.0 <= model.last_train_stats.actor_saturation < 0.5
    pin_actor(model.actor.mu)
    model.actor.optimizer.param_groups[0]["lr"] = 0.0
    model.actor_lr_schedule = lambda _: 0.0
    model.policy_delay = 1
    model.train(gradient_steps=1, batch_size=8)
    assert model.last_train_stats.actor_saturation == 1.0
    assert model.last_train_stats.actor_grad_norm_pre < 1e-6  # why it matters: no gradient gets through


def test_pinned_td3cnn_actor_is_flagged_and_can_stop_training(tmp_path):
    model = make_model(learning_starts=30, policy_delay=1, actor_lr=1e-12)
    pin_actor(model.actor.mu)
    callback = ActionSaturationCallback(patience_steps=3, stop_on_saturation=True, checkpoint_path=tmp_path / "saturated.zip")
    with pytest.warns(TrainingHealthWarning, match="actor saturated at timestep"):
        model.learn(100, callback=callback)
    assert model.num_timesteps < 100 and callback.saturated_at_step is not None
    assert (tmp_path / "saturated.zip").is_file()
    verdict = callback.verdict()
    assert verdict.passed is False and verdict.value == 1.0 and verdict.threshold == 0.9


def test_plain_sb3_td3_actor_is_scored_on_replay_samples():
    model = TD3("MlpPolicy", "Pendulum-v1", learning_starts=50, policy_kwargs={"net_arch": [16]}, learning_rate=1e-12, seed=0)
    pin_actor(model.actor.mu)
    callback = ActionSaturationCallback(patience_steps=20, check_freq=20)
    with pytest.warns(TrainingHealthWarning, match="actor saturated"):
        model.learn(120, callback=callback)
    assert callback.verdict().passed is False


def test_healthy_run_passes_and_the_bundle_reports_it():
    model = make_model(learning_starts=30)
    health = TrainingHealthCallback()
    model.learn(60, callback=health)
    verdict = health.verdict()["actor_saturation"]
    assert verdict.passed is True and verdict.value < 0.9


@pytest.mark.parametrize(
    ("kwargs", "name"), [({"max_fraction": 0.0}, "max_fraction"), ({"patience_steps": -1}, "patience_steps")]
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ActionSaturationCallback(**kwargs)


def _pendulum_td3() -> TD3:
    return TD3("MlpPolicy", "Pendulum-v1", learning_starts=50, policy_kwargs={"net_arch": [16]}, seed=0, device="cpu")


def test_health_checks_leave_a_seeded_run_unchanged():
    """The Q-value and saturation checks draw replay samples; with every RNG restored the weights stay identical."""
    plain = _pendulum_td3()
    plain.learn(150)
    checked = _pendulum_td3()
    health = TrainingHealthCallback(check_freq=10, variation=ActorVariationCallback(warmup_steps=0, check_freq=10))
    checked.learn(150, callback=health)
    assert health.saturation.latest is not None and health.q_values.last_sample is not None  # the checks did run
    assert health.variation.latest is not None
    for name, weight in plain.policy.state_dict().items():
        assert th.equal(weight, checked.policy.state_dict()[name]), name


def test_sac_is_scored_on_its_deterministic_mean_action():
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=50, policy_kwargs={"net_arch": [16]}, learning_rate=1e-12, seed=0)
    with th.no_grad():
        model.actor.mu.weight.zero_()
        model.actor.mu.bias.zero_()  # mean action tanh(0) = 0: nowhere near the bounds
        model.actor.log_std.weight.zero_()
        model.actor.log_std.bias.fill_(2.0)  # std e^2: about 70 % of *sampled* actions land beyond |a| = 0.99
    callback = ActionSaturationCallback(patience_steps=20, check_freq=20)
    model.learn(120, callback=callback)
    assert callback.latest == 0.0 and callback.verdict().passed is True


def test_algorithm_without_an_actor_is_not_applicable():
    from stable_baselines3 import DQN

    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=10, policy_kwargs={"net_arch": [8]}, seed=0)
    callback = ActionSaturationCallback(check_freq=5)
    model.learn(30, callback=callback)
    verdict = callback.verdict()
    assert verdict.passed is None and "DQN has no actor" in verdict.detail

"""A blind actor (the same action on every observation) is flagged, for TD3CNN (train stats) and plain SB3 TD3."""

from __future__ import annotations

import pytest
import torch as th
from conftest import make_model
from stable_baselines3 import TD3

from sb3_carla_td3.callbacks import ActorVariationCallback, TrainingHealthCallback
from sb3_carla_td3.callbacks.actor_variation import action_spread
from sb3_carla_td3.config import config_from_dict
from sb3_carla_td3.errors import ConfigError
from sb3_carla_td3.health import TrainingHealthWarning
from sb3_carla_td3.tuning import health_failure
from sb3_carla_td3.validation.runner import health_callback


def blind_actor(actor_mu: th.nn.Sequential, value: float = 0.3) -> None:
    """Make the actor's last linear layer ignore its input: every observation gets tanh(value), far from the bounds."""
    last = [m for m in actor_mu if isinstance(m, th.nn.Linear)][-1]
    with th.no_grad():
        last.weight.zero_()
        last.bias.fill_(value)


def _pendulum_td3(**kwargs) -> TD3:
    return TD3("MlpPolicy", "Pendulum-v1", learning_starts=50, policy_kwargs={"net_arch": [16]}, seed=0, device="cpu",
               **kwargs)  # fmt: skip


def test_action_spread_is_the_largest_per_dimension_std():
    assert action_spread(th.tensor([[0.2, -0.5]] * 4)) == 0.0
    actions = th.tensor([[0.0, 0.1], [0.0, -0.1], [0.0, 0.1], [0.0, -0.1]])
    assert action_spread(actions) == pytest.approx(0.1)
    assert action_spread(th.tensor([[0.7, 0.2]])) == 0.0  # one observation: nothing to compare


def test_td3cnn_logs_the_spread_of_its_actions_over_the_replay_batch():
    model = make_model(learning_starts=30, policy_delay=1)
    model.learn(40)
    assert model.last_train_stats.actor_action_std > 0.0
    blind_actor(model.actor.mu)
    model.actor_lr_schedule = lambda _: 0.0
    model.train(gradient_steps=1, batch_size=8)
    assert model.last_train_stats.actor_action_std == 0.0


def test_blind_td3cnn_actor_is_flagged_after_the_warmup_and_can_stop_training(tmp_path):
    model = make_model(learning_starts=30, policy_delay=1, actor_lr=1e-12)
    blind_actor(model.actor.mu)
    callback = ActorVariationCallback(warmup_steps=40, patience_steps=3, stop_on_blind=True,
                                      checkpoint_path=tmp_path / "blind.zip")  # fmt: skip
    with pytest.warns(TrainingHealthWarning, match="actor blind at timestep"):
        model.learn(200, callback=callback)
    assert callback.blind_at_step is not None and callback.blind_at_step >= 30 + 40  # never inside the warm-up
    assert model.num_timesteps < 200 and (tmp_path / "blind.zip").is_file()
    verdict = callback.verdict()
    assert verdict.passed is False and verdict.value == 0.0 and verdict.threshold == 0.01


def test_a_blind_actor_inside_the_warmup_is_not_judged():
    model = make_model(learning_starts=30, policy_delay=1, actor_lr=1e-12)
    blind_actor(model.actor.mu)
    callback = ActorVariationCallback(warmup_steps=1000, patience_steps=1)
    model.learn(80, callback=callback)
    verdict = callback.verdict()
    assert verdict.passed is None and "checks start 1000 env steps after learning_starts" in verdict.detail


def test_plain_sb3_td3_actor_is_scored_on_replay_samples():
    blind = _pendulum_td3(learning_rate=1e-12)
    blind_actor(blind.actor.mu)
    callback = ActorVariationCallback(warmup_steps=0, patience_steps=20, check_freq=20)
    with pytest.warns(TrainingHealthWarning, match="actor blind"):
        blind.learn(150, callback=callback)
    assert callback.verdict().passed is False

    seeing = _pendulum_td3(learning_rate=1e-12)
    with th.no_grad():  # a last layer large enough that the action follows the observation, still inside (-1, 1)
        last = [m for m in seeing.actor.mu if isinstance(m, th.nn.Linear)][-1]
        last.weight.mul_(5.0)
    callback = ActorVariationCallback(warmup_steps=0, patience_steps=20, check_freq=20)
    seeing.learn(150, callback=callback)
    assert callback.verdict().passed is True and callback.lowest > 0.01


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"min_std": 0.0}, "min_std"), ({"patience_steps": -1}, "patience_steps"), ({"n_samples": 1}, "n_samples"),
     ({"warmup_steps": -1}, "warmup_steps"), ({"warmup_steps": True}, "warmup_steps")],
)  # fmt: skip
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ActorVariationCallback(**kwargs)


def test_monitor_section_configures_the_check_and_rejects_bad_values():
    config = config_from_dict({"monitor": {"variation_min_std": 0.05, "variation_patience_steps": 7,
                                           "variation_warmup_steps": 123, "stop_on_blind": True}})  # fmt: skip
    check = health_callback(config).variation
    assert (check.min_std, check.patience_steps, check.warmup_steps, check.stop_on_blind) == (0.05, 7, 123, True)
    with pytest.raises(ConfigError, match="variation_min_std"):
        config_from_dict({"monitor": {"variation_min_std": 0.0}})


def test_the_bundle_judges_it_and_a_tuning_trial_is_pruned_by_it():
    health = TrainingHealthCallback(variation=ActorVariationCallback(warmup_steps=0, patience_steps=10, check_freq=10))
    model = _pendulum_td3(learning_rate=1e-12)
    blind_actor(model.actor.mu)
    with pytest.warns(TrainingHealthWarning, match="actor blind"):
        model.learn(120, callback=health)
    assert health.verdict()["actor_variation"].passed is False
    check, step, reason = health_failure(health, None, ["actor_variation"])
    assert (check, step) == ("actor_variation", health.variation.blind_at_step)
    assert reason.startswith("actor_variation: blind from timestep")


def test_td3cnn_checks_count_actor_updates_not_train_calls():
    """With policy_delay 2 only every other train() call updates the actor: a check per actor update, no repeats."""
    model = make_model(learning_starts=30, policy_delay=2, actor_lr=1e-12)
    blind_actor(model.actor.mu)
    callback = ActorVariationCallback(warmup_steps=0, patience_steps=10**6)
    model.learn(90, callback=callback)
    actor_updates = model.last_train_stats.n_actor_updates
    assert actor_updates == model.last_train_stats.n_updates // 2
    # the last call's stats are read at no later step
    assert actor_updates - 1 <= callback.persistence.failing_checks <= actor_updates


def test_algorithm_without_an_actor_is_not_applicable_even_inside_the_warmup():
    from stable_baselines3 import DQN

    model = DQN("MlpPolicy", "CartPole-v1", learning_starts=10, policy_kwargs={"net_arch": [8]}, seed=0)
    callback = ActorVariationCallback(check_freq=5)
    model.learn(30, callback=callback)
    verdict = callback.verdict()
    assert verdict.passed is None and "DQN has no actor" in verdict.detail

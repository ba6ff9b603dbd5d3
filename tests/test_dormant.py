"""Dormant units (Sokar et al. 2023): the share per layer, the layers found, the hooks removed."""

from __future__ import annotations

import pytest
import torch as th
from torch import nn

from sb3_carla_td3.callbacks.dormant import DormantUnitCallback, activation_layers, dormant_share, dormant_shares


def test_a_dead_relu_channel_is_dormant_at_tau_zero():
    activations = th.rand(8, 4, 5, 5)
    activations[:, 1] = 0.0  # never fires on any frame or position
    assert dormant_share(activations, tau=0.0) == pytest.approx(0.25)
    activations[:, 2] = 0.0
    activations[3, 2, 0, 0] = 1e-6  # fires once, faintly: alive at tau 0, dormant at tau 0.025
    assert dormant_share(activations, tau=0.0) == pytest.approx(0.25)
    assert dormant_share(activations, tau=0.025) == pytest.approx(0.5)


def test_the_score_is_normalised_by_the_layer_mean():
    units = th.tensor([[1.0, 1.0, 1.0, 0.02]]).repeat(16, 1)  # unit 3: 0.02 / 0.755 = 0.026 of the layer mean
    assert dormant_share(units, tau=0.025) == 0.0
    assert dormant_share(units, tau=0.03) == pytest.approx(0.25)
    assert dormant_share(units * 1000.0, tau=0.03) == pytest.approx(0.25)  # scale-free
    assert dormant_share(-units, tau=0.03) == pytest.approx(0.25)  # |h|: a tanh unit at -1 is active


def test_a_silent_layer_is_wholly_dormant_and_bad_shapes_are_named():
    assert dormant_share(th.zeros(4, 6), tau=0.0) == 1.0
    with pytest.raises(ValueError, match="expected \\(batch, units"):
        dormant_share(th.zeros(5), tau=0.0)


def test_activation_layers_of_a_network_in_order_and_once():
    shared = nn.ReLU()
    net = nn.Sequential(nn.Conv2d(1, 2, 3), shared, nn.Flatten(), nn.Linear(18, 4), nn.Tanh(), shared)
    layers = activation_layers(net, prefix="critic.")
    assert list(layers) == ["critic.1", "critic.4"]  # the second use of the same ReLU is not a second layer


def test_dormant_shares_measures_every_layer_and_removes_its_hooks():
    conv = nn.Conv2d(1, 3, 3)
    with th.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(th.tensor([-1.0, 0.5, 1.0]))  # channel 0 is dead for every input
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 5), nn.LeakyReLU(0.01))
    layers = activation_layers(net)
    shares = dormant_shares(layers, lambda: net(th.rand(10, 1, 6, 6)), tau=0.0)
    assert set(shares) == {"1", "4"} and shares["1"] == pytest.approx(1 / 3)
    assert all(not module._forward_hooks for module in layers.values())
    assert net[0].weight.grad is None  # measured without gradient


# --- DormantUnitCallback on whole models -------------------------------------------------------------------------


def _seeded_model(**kwargs):
    from tests.conftest import make_image_env, make_model

    env = make_image_env()
    env.observation_space.seed(0)  # FakeImageEnv's frames come from its space's RNG, which seed=0 does not reach
    return make_model(env, **kwargs)


def _kill_first_conv(extractor: nn.Module) -> None:
    conv = next(m for m in extractor.modules() if isinstance(m, nn.Conv2d))
    with th.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-1.0)  # negative on every input: every channel dead after the ReLU


def _learn(model, callback, steps=120):
    from stable_baselines3.common.logger import configure

    model.set_logger(configure(None, ["csv"]))
    model.learn(steps, callback=callback)
    return model


@pytest.mark.parametrize("encoder", ["shared", "separate"])
def test_the_callback_logs_each_layer_and_changes_no_training(encoder):

    callback = DormantUnitCallback(check_freq=20, n_samples=16)
    watched = _learn(_seeded_model(encoder=encoder), callback)  # each built right before it learns: SB3 seeds the
    plain = _learn(_seeded_model(encoder=encoder), [])  # global RNGs at construction, and learn() draws from them
    for a, b in zip(watched.policy.parameters(), plain.policy.parameters(), strict=True):
        assert th.equal(a, b)  # replay samples drawn under a restored RNG, forward passes without gradient
    recorded = dict(callback.latest)
    if encoder == "shared":  # one encoder, measured once
        assert any(p.startswith("encoder.cnn.") for p in recorded) and not any("features_extractor" in p for p in recorded)
    else:
        assert {p.split(".")[0] for p in recorded if ".features_extractor.cnn." in p} == {"critic", "actor"}
    assert all(0.0 <= share <= 1.0 for share in recorded.values())
    assert not any(p.startswith("actor.mu.") and p.endswith(str(len(watched.actor.mu) - 1)) for p in recorded)
    verdict = callback.verdict()
    assert verdict.passed is True and verdict.threshold == 0.95 and "peak" in verdict.detail


def test_a_dead_first_conv_layer_is_flagged_after_its_patience():
    from sb3_carla_td3.callbacks.verdicts import TrainingHealthWarning
    from tests.conftest import make_model

    model = make_model(encoder="shared")  # a dead ReLU gets no gradient: the layer stays dead
    _kill_first_conv(model.policy.encoder)
    callback = DormantUnitCallback(check_freq=20, n_samples=16, patience_steps=40)
    with pytest.warns(TrainingHealthWarning, match="first conv layer dead at timestep"):
        _learn(model, callback, steps=140)
    assert callback.first_conv == 1.0
    # learning starts at 32: checks at 32, 52, 72 -> the condition has held 40 env steps at the third
    assert callback.dead_at_step == 72
    verdict = callback.verdict()
    assert verdict.passed is False and verdict.value == 1.0 and "dead from timestep 72" in verdict.detail


def test_the_callback_stops_training_with_a_checkpoint(tmp_path):
    from tests.conftest import make_model

    model = make_model(encoder="shared")
    _kill_first_conv(model.policy.encoder)
    callback = DormantUnitCallback(check_freq=10, n_samples=8, patience_steps=0, stop_on_dead=True,
                                   checkpoint_path=tmp_path / "stopped")  # fmt: skip
    with pytest.warns(UserWarning):
        _learn(model, callback, steps=200)
    assert model.num_timesteps == 32 and (tmp_path / "stopped.zip").is_file()


def test_without_a_conv_layer_or_a_critic_the_verdict_is_na_with_the_reason():
    import gymnasium as gym
    from stable_baselines3 import PPO, SAC


    sac = SAC("MlpPolicy", "Pendulum-v1", learning_starts=20, batch_size=8, policy_kwargs={"net_arch": [8]}, seed=0)
    callback = DormantUnitCallback(check_freq=10, n_samples=8)
    _learn(sac, callback, steps=60)
    assert callback.latest and callback.verdict().passed is None and "no conv layer" in callback.verdict().detail
    assert not callback.verdict().applies  # nothing to judge on a vector: the run's verdict is not held back
    assert DormantUnitCallback(check_freq=10).verdict().applies  # not measured yet: N/A for want of data
    assert any(p.startswith("actor.latent_pi") for p in callback.latest)  # SAC's actor measured too

    ppo = PPO("MlpPolicy", gym.make("Pendulum-v1"), n_steps=32, batch_size=8, policy_kwargs={"net_arch": [8]})
    callback = DormantUnitCallback(check_freq=10)
    _learn(ppo, callback, steps=32)
    verdict = callback.verdict()
    assert verdict.passed is None and "PPO has no critic and replay buffer" in verdict.detail and not verdict.applies


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"check_freq": 0}, "check_freq"), ({"n_samples": 1}, "n_samples"), ({"tau": -0.1}, "tau"),
     ({"max_first_conv": 1.5}, "max_first_conv"), ({"patience_steps": -1}, "patience_steps")],
)  # fmt: skip
def test_bad_arguments_are_named(kwargs, name):

    with pytest.raises(ValueError, match=name):
        DormantUnitCallback(**kwargs)


def test_a_dead_encoder_is_a_health_row_and_a_pruning_reason():
    from sb3_carla_td3.callbacks import TrainingHealthCallback
    from sb3_carla_td3.tuning.pruning import health_failure
    from sb3_carla_td3.tuning.space import HEALTH_CHECKS
    from sb3_carla_td3.validation.report import phase1_rows

    model = _seeded_model(encoder="shared")
    _kill_first_conv(model.policy.encoder)
    health = TrainingHealthCallback(dormant=DormantUnitCallback(check_freq=20, n_samples=16, patience_steps=0))
    with pytest.warns(UserWarning):
        _learn(model, health, steps=60)
    rows = {row.metric: row for row in phase1_rows(health.verdict(), 1.0, 10.0)}
    assert rows["First conv layer: dormant channels (share)"].passed is False
    assert "dormant_units" in HEALTH_CHECKS
    check, step, reason = health_failure(health, model.last_train_stats, ["dormant_units"])
    assert (check, step) == ("dormant_units", 32) and reason.startswith("dormant_units: first conv layer dead")


def test_a_dead_camera_encoder_beside_a_vector_is_a_warning_not_an_alarm():
    from sb3_carla_td3 import TD3CNN
    from sb3_carla_td3.callbacks.verdicts import TrainingHealthWarning
    from sb3_carla_td3.envs import CarRacingConfig, CarRacingEnv
    from tests.conftest import TINY_ENCODER

    env = CarRacingEnv(CarRacingConfig(image_size=36, vector_obs=True, max_episode_steps=40))
    model = TD3CNN("MultiInputPolicy", env, buffer_size=200, learning_starts=32, batch_size=8, seed=0, device="cpu",
                   policy_kwargs={"net_arch": [16], "features_extractor_kwargs": dict(TINY_ENCODER)})  # fmt: skip
    _kill_first_conv(model.policy.encoder)
    callback = DormantUnitCallback(check_freq=20, n_samples=8, patience_steps=0, stop_on_dead=True)
    with pytest.warns(TrainingHealthWarning, match="a vector input carries the policy"):
        _learn(model, callback, steps=80)
    assert model.num_timesteps == 80  # no stop: not an alarm
    verdict = callback.verdict()
    assert verdict.passed is None and verdict.value == 1.0 and "not judged beside a vector" in verdict.detail
    assert callback.dead_at_step == 32 and not callback.alarm

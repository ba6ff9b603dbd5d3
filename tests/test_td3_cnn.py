"""TD3CNN: verified joint clipping, non-finite handling, logging, encoder wiring, learning rates, save/load."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch as th
from conftest import TINY_ENCODER, make_image_env, make_model

from sb3_carla_td3 import GradientClipError, NonFiniteGradientError
from sb3_carla_td3 import td3_cnn as td3_cnn_module
from sb3_carla_td3.gradients import grad_norm, sum_of_norms
from sb3_carla_td3.td3_cnn import TD3CNN


def record_steps(optimizer: th.optim.Optimizer, store: list[dict[str, float]]) -> None:
    """Measure, independently of TD3CNN, the gradients each optimizer.step() consumes."""

    def hook(opt: th.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        squared = sum(float(p.grad.detach().double().pow(2).sum()) for p in params)
        store.append({"global": math.sqrt(squared), "sum_of_norms": float(sum_of_norms(params)), "tensors": len(params)})

    optimizer.register_step_pre_hook(hook)


@pytest.mark.parametrize("side", ["actor", "critic"])
def test_every_step_consumes_gradients_within_the_clip_limit(filled_model, side):
    limit = 1e-3  # far below the natural norms, so every update is clipped
    filled_model.actor_grad_clip = filled_model.critic_grad_clip = limit
    optimizer = getattr(filled_model, side).optimizer
    steps: list[dict[str, float]] = []
    record_steps(optimizer, steps)
    filled_model.train(gradient_steps=6, batch_size=8)

    assert len(steps) == (6 if side == "critic" else 3)
    assert all(step["global"] <= limit * (1 + 1e-6) for step in steps)
    stats = filled_model.last_train_stats
    assert stats.side(side, "grad_norm_pre") > stats.side(side, "grad_norm_post")
    assert stats.side(side, "grad_norm_post") == pytest.approx(steps[-1]["global"], rel=1e-5)
    assert stats.side(side, "clip_fraction") == 1.0


def test_sum_of_norms_metric_would_report_a_false_clipping_failure(filled_model):
    """The original system's metric reads a correctly clipped critic gradient as over the limit."""
    limit = 1e-3
    filled_model.critic_grad_clip = limit
    steps: list[dict[str, float]] = []
    record_steps(filled_model.critic.optimizer, steps)
    filled_model.train(gradient_steps=2, batch_size=8)
    assert steps[-1]["tensors"] > 1
    assert steps[-1]["global"] <= limit * (1 + 1e-6)
    assert steps[-1]["sum_of_norms"] > limit * 1.5
    assert filled_model.last_train_stats.critic_grad_norm_post <= limit * (1 + 1e-6)


def test_component_norms_combine_into_the_global_pre_clip_norm(filled_model):
    filled_model.train(gradient_steps=2, batch_size=8)
    stats = filled_model.last_train_stats
    for side in ("actor", "critic"):
        combined = math.hypot(stats.side(side, "cnn_grad_norm_pre"), stats.side(side, "head_grad_norm_pre"))
        assert stats.side(side, "grad_norm_pre") == pytest.approx(combined, rel=1e-5)
        assert stats.side(side, "cnn_grad_norm_pre") > 0


def test_huge_limit_leaves_gradients_unchanged(filled_model):
    filled_model.actor_grad_clip = filled_model.critic_grad_clip = 1e9
    filled_model.train(gradient_steps=2, batch_size=8)
    stats = filled_model.last_train_stats
    for side in ("actor", "critic"):
        assert stats.side(side, "grad_norm_post") == pytest.approx(stats.side(side, "grad_norm_pre"), rel=1e-5)
        assert stats.side(side, "clip_fraction") == 0.0


def test_clipping_none_measures_but_does_not_clip(filled_model):
    filled_model.critic_grad_clip = None
    steps: list[dict[str, float]] = []
    record_steps(filled_model.critic.optimizer, steps)
    filled_model.train(gradient_steps=1, batch_size=8)
    assert filled_model.last_train_stats.critic_grad_norm_pre == pytest.approx(steps[0]["global"], rel=1e-5)


def _broken_clip(params, max_norm, total_norm):
    """A clip that measures but forgets to scale: what verification must catch."""
    return float(grad_norm(params.all))


def test_verification_raises_when_clipping_did_not_happen(filled_model, monkeypatch):
    monkeypatch.setattr(td3_cnn_module, "clip_to_norm", _broken_clip)
    filled_model.critic_grad_clip = 1e-6
    before = [p.detach().clone() for p in filled_model.critic.parameters()]
    with pytest.raises(GradientClipError, match="critic_grad_clip=1e-06"):
        filled_model.train(gradient_steps=1, batch_size=8)
    assert all(th.equal(a, b.detach()) for a, b in zip(before, filled_model.critic.parameters(), strict=True))


def test_verification_can_warn_instead(filled_model, monkeypatch):
    monkeypatch.setattr(td3_cnn_module, "clip_to_norm", _broken_clip)
    filled_model.critic_grad_clip = 1e-6
    filled_model.clip_check = "warn"
    with pytest.warns(RuntimeWarning, match="critic gradient clipping failed"):
        filled_model.train(gradient_steps=1, batch_size=8)


def _poison_first_critic_gradient(model) -> None:
    first = next(model.critic.parameters())
    first.register_hook(lambda grad: grad * float("nan"))


def test_nan_gradient_skips_the_step_and_keeps_weights_and_optimizer_state(filled_model):
    filled_model.train(gradient_steps=1, batch_size=8)  # give Adam a state to compare
    weights = [p.detach().clone() for p in filled_model.critic.parameters()]
    adam_steps = [s["step"].clone() for s in filled_model.critic.optimizer.state.values()]
    _poison_first_critic_gradient(filled_model)
    with pytest.warns(RuntimeWarning, match="non-finite critic update"):
        filled_model.train(gradient_steps=1, batch_size=8)
    assert all(th.equal(w, p.detach()) for w, p in zip(weights, filled_model.critic.parameters(), strict=True))
    assert [s["step"] for s in filled_model.critic.optimizer.state.values()] == adam_steps
    assert filled_model.nonfinite_skips == 1
    assert filled_model.last_train_stats.nonfinite_skips == 1.0


def test_nan_gradient_raises_when_asked(filled_model):
    filled_model.nonfinite_grads = "raise"
    _poison_first_critic_gradient(filled_model)
    with pytest.raises(NonFiniteGradientError, match="critic"):
        filled_model.train(gradient_steps=1, batch_size=8)


def test_actor_metrics_are_logged_whenever_an_actor_update_happened(filled_model):
    actor_keys = ["train/actor_grad_norm_pre", "train/actor_grad_norm_post", "train/actor_loss", "train/actor_q_mean"]
    for _ in range(4):
        filled_model.logger.name_to_value.clear()
        filled_model.train(gradient_steps=1, batch_size=8)
        logged = filled_model.logger.name_to_value
        actor_step = filled_model._n_updates % filled_model.policy_delay == 0
        assert all((key in logged) == actor_step for key in actor_keys)
        assert "train/critic_grad_norm_post" in logged and "train/q1_mean" in logged


def test_all_documented_train_keys_are_logged(filled_model):
    filled_model.train(gradient_steps=2, batch_size=8)
    expected = [
        "critic_grad_norm_pre", "critic_grad_norm_post", "actor_grad_norm_pre", "actor_grad_norm_post",
        "critic_cnn_grad_norm_pre", "critic_head_grad_norm_pre", "actor_cnn_grad_norm_pre", "actor_head_grad_norm_pre",
        "critic_clip_fraction", "actor_clip_fraction", "q1_mean", "q2_mean", "q_max", "target_q_mean", "target_q_max",
        "actor_q_mean", "critic_loss", "actor_loss", "nonfinite_skips",
    ]  # fmt: skip
    logged = filled_model.logger.name_to_value
    assert [key for key in expected if f"train/{key}" not in logged] == []
    assert [key for key in expected if getattr(filled_model.last_train_stats, key) is None] == []


def test_targets_own_their_encoders():
    model = make_model()
    extractors = [model.actor, model.actor_target, model.critic, model.critic_target]
    assert len({id(m.features_extractor) for m in extractors}) == 4


def test_polyak_moves_target_encoders_by_tau(filled_model):
    filled_model.tau = 0.0
    target = [p.detach().clone() for p in filled_model.critic_target.features_extractor.parameters()]
    filled_model.train(gradient_steps=2, batch_size=8)
    assert all(th.equal(a, b) for a, b in zip(target, filled_model.critic_target.features_extractor.parameters(), strict=True))
    filled_model.tau = 1.0
    filled_model.train(gradient_steps=2, batch_size=8)
    online, copied = filled_model.critic.features_extractor, filled_model.critic_target.features_extractor
    assert all(th.equal(a, b) for a, b in zip(online.parameters(), copied.parameters(), strict=True))


def test_actor_loss_scores_actions_on_the_critics_own_encoding(filled_model):
    """The critic head in the actor loss must see critic-encoder features, never actor-encoder features."""
    seen: dict[str, list[th.Tensor]] = {"critic_features": [], "actor_features": [], "qf0_inputs": []}
    filled_model.critic.features_extractor.register_forward_hook(lambda m, i, o: seen["critic_features"].append(o.detach()))
    filled_model.actor.features_extractor.register_forward_hook(lambda m, i, o: seen["actor_features"].append(o.detach()))
    filled_model.critic.q_networks[0].register_forward_pre_hook(lambda m, i: seen["qf0_inputs"].append(i[0].detach()))
    filled_model.policy_delay = 1
    filled_model.train(gradient_steps=1, batch_size=8)

    actor_loss_input = seen["qf0_inputs"][-1]  # critic loss first, then the actor loss
    n_features = filled_model.critic.features_extractor.features_dim
    features = actor_loss_input[:, :n_features]
    assert th.allclose(features, seen["critic_features"][-1])
    assert not th.allclose(features, seen["actor_features"][-1])


def test_per_side_learning_rates_reach_the_optimizers():
    model = make_model(actor_lr=1e-4, critic_lr=3e-4)
    assert model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    assert model.critic.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)


def test_learning_rate_schedules_update_each_side():
    model = make_model(actor_lr=lambda progress: 1e-3 * progress, critic_lr=5e-4, learning_starts=10)
    model.learn(20)
    assert model.actor.optimizer.param_groups[0]["lr"] < 1e-3
    assert model.critic.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"actor_grad_clip": 0.0}, "actor_grad_clip"),
        ({"critic_grad_clip": -1.0}, "critic_grad_clip"),
        ({"clip_check": "sometimes"}, "clip_check"),
        ({"nonfinite_grads": "ignore"}, "nonfinite_grads"),
        ({"actor_lr": 0.0}, "actor_lr"),
        ({"preact_penalty": -0.1}, "preact_penalty"),
        ({"preact_penalty": float("inf")}, "preact_penalty"),
        ({"preact_penalty": True}, "preact_penalty"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model(**kwargs)


def test_save_load_keeps_settings_counters_and_actions(filled_model, tmp_path):
    filled_model.actor_grad_clip, filled_model.clip_check = 0.5, "warn"
    filled_model.train(gradient_steps=3, batch_size=8)
    filled_model.nonfinite_skips = 2
    path = tmp_path / "model.zip"
    filled_model.save(path)
    loaded = type(filled_model).load(path, env=make_image_env(), device="cpu")

    assert (loaded.actor_grad_clip, loaded.critic_grad_clip, loaded.clip_check) == (0.5, 10.0, "warn")
    assert loaded._n_updates == filled_model._n_updates == 3
    assert loaded.nonfinite_skips == 2
    assert loaded.last_train_stats == filled_model.last_train_stats
    assert loaded._actor_params.encoder and loaded._critic_params.head
    obs = np.stack([make_image_env().observation_space.sample() for _ in range(3)])
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], filled_model.predict(obs, deterministic=True)[0])
    filled_model.save_replay_buffer(tmp_path / "buffer.pkl")
    loaded.load_replay_buffer(tmp_path / "buffer.pkl")
    loaded.set_logger(filled_model.logger)
    loaded.train(gradient_steps=1, batch_size=8)  # the rebuilt parameter split trains
    assert loaded._n_updates == 4


def test_shared_encoder_is_stepped_by_the_critic_optimizer_only():
    model = make_model(encoder="shared")
    encoder_ids = {id(p) for p in model.policy.encoder.parameters()}
    actor_ids = {id(p) for g in model.actor.optimizer.param_groups for p in g["params"]}
    critic_ids = {id(p) for g in model.critic.optimizer.param_groups for p in g["params"]}
    assert encoder_ids and encoder_ids <= critic_ids and not encoder_ids & actor_ids
    assert {id(p) for p in model._critic_params.encoder} == encoder_ids
    assert not hasattr(model.policy, "encoder_target")  # DrQ-v2: next obs go through the online encoder, detached


def test_shared_encoder_gets_no_gradient_from_the_actor_loss():
    model = make_model(encoder="shared", learning_starts=1000)
    model.learn(40)
    model.policy_delay = 1
    encoder = list(model.policy.encoder.parameters())
    after_critic: list[th.Tensor] = []
    unchanged: list[bool] = []
    model.critic.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: after_critic.__setitem__(slice(None), [p.grad.clone() for p in encoder])
    )

    def before_actor_step(opt, args, kwargs):  # after the actor backward
        unchanged.append(all(th.equal(g, p.grad) for g, p in zip(after_critic, encoder, strict=True)))

    model.actor.optimizer.register_step_pre_hook(before_actor_step)
    model.train(gradient_steps=2, batch_size=8)
    assert unchanged == [True, True]
    assert model.last_train_stats.actor_cnn_grad_norm_pre == 0.0
    assert model.last_train_stats.critic_cnn_grad_norm_pre > 0.0


def test_shared_encoder_clipping_covers_the_encoder():
    model = make_model(encoder="shared", learning_starts=1000, critic_grad_clip=1e-3)
    model.learn(40)
    steps: list[dict[str, float]] = []
    record_steps(model.critic.optimizer, steps)
    model.train(gradient_steps=2, batch_size=8)
    assert all(step["global"] <= 1e-3 * (1 + 1e-6) for step in steps)
    assert steps[-1]["tensors"] == len(model._critic_params.all)


def test_shared_encoder_save_load_round_trip(tmp_path):
    model = make_model(encoder="shared", learning_starts=16)
    model.learn(30)
    model.save(tmp_path / "shared.zip")
    loaded = type(model).load(tmp_path / "shared.zip", env=make_image_env(), device="cpu")
    assert loaded.encoder == "shared" and loaded._shared
    obs = np.stack([make_image_env().observation_space.sample() for _ in range(2)])
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])


def test_preact_penalty_is_added_to_the_actor_loss(filled_model):
    filled_model.preact_penalty = 0.5
    filled_model.train(gradient_steps=2, batch_size=8)
    stats = filled_model.last_train_stats
    assert stats.actor_preact_sq > 0
    expected = -stats.actor_q_mean + 0.5 * stats.actor_preact_sq
    assert stats.actor_loss == pytest.approx(expected, rel=1e-5)


def test_pre_tanh_values_are_the_actors_output_before_its_tanh(filled_model):
    obs = th.as_tensor(np.stack([make_image_env().observation_space.sample() for _ in range(4)]))
    obs = filled_model.policy.obs_to_tensor(obs.numpy())[0]
    actions, preact = filled_model._actor_forward(obs)
    th.testing.assert_close(actions, th.tanh(preact))
    th.testing.assert_close(actions, filled_model.actor(obs))


@pytest.mark.parametrize("encoder", ["separate", "shared"])
def test_preact_penalty_pulls_a_saturated_actor_off_its_plateau(encoder):
    """Scale the actor's last layer so that tanh saturates; the penalty (and only it) brings the outputs back."""
    results = {}
    for penalty in (0.0, 10.0):
        model = make_model(learning_starts=1000, encoder=encoder, preact_penalty=penalty, actor_lr=1e-2, critic_lr=1e-12)
        model.learn(40)
        with th.no_grad():
            model.actor.mu[-2].weight.mul_(50.0)
            model.actor.mu[-2].bias.fill_(5.0)
        model.train(gradient_steps=60, batch_size=8)
        results[penalty] = model.last_train_stats.actor_preact_sq
    assert results[10.0] < 0.1 * results[0.0], results


@pytest.mark.parametrize("dict_obs", [False, True])
def test_n_steps_on_a_frame_stack_uses_the_frame_buffer_and_survives_save_load(dict_obs, tmp_path):
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack
    from test_policies import TinyDictEnv

    from sb3_carla_td3.buffers import DictFrameStackReplayBuffer, FrameStackReplayBuffer

    env = VecFrameStack(DummyVecEnv([TinyDictEnv if dict_obs else lambda: make_image_env(channels=2)]), 2)
    tiny = {"net_arch": [8], "features_extractor_kwargs": dict(TINY_ENCODER)}
    kwargs = {"n_steps": 3, "gamma": 0.9, "buffer_size": 200, "learning_starts": 20, "batch_size": 8, "device": "cpu"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SB3's "n_steps is ignored because a custom replay_buffer_class" must not fire
        model = TD3CNN("MultiInputPolicy" if dict_obs else "CnnPolicy", env, policy_kwargs=tiny, seed=0, **kwargs)
        buffer = model.replay_buffer
        assert type(buffer) is (DictFrameStackReplayBuffer if dict_obs else FrameStackReplayBuffer)
        assert (buffer.n_steps, buffer.gamma, buffer.frames) == (3, 0.9, 2)
        model.learn(60)
        assert model._n_updates > 0
        samples = buffer.sample(64)
        assert samples.discounts is not None and th.unique(samples.discounts).numel() > 1  # whole and cut windows
        model.save(tmp_path / "m.zip")
        loaded = TD3CNN.load(tmp_path / "m.zip", env=env, device="cpu")
    assert type(loaded.replay_buffer) is type(buffer) and loaded.replay_buffer.n_steps == 3


def test_n_steps_with_dict_observations_without_a_frame_stack_names_the_way_out():
    from test_policies import TinyDictEnv

    with pytest.raises(ValueError, match=r"n_steps=3 is not supported for these Dict observations.*VecFrameStack"):
        TD3CNN("MultiInputPolicy", TinyDictEnv(), n_steps=3, buffer_size=100, device="cpu")


def test_n_steps_trains_with_sb3_n_step_buffer_on_vectors():
    model = TD3CNN("MlpPolicy", "Pendulum-v1", n_steps=3, buffer_size=200, learning_starts=20, batch_size=8,
                   policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")  # fmt: skip
    assert type(model.replay_buffer).__name__ == "NStepReplayBuffer"
    model.learn(40)
    samples = model.replay_buffer.sample(8)
    assert samples.discounts is not None and float(samples.discounts.min()) < model.gamma  # some 2- or 3-step targets


@pytest.mark.parametrize("policy", ["CnnPolicy", "MultiInputPolicy"])
@pytest.mark.parametrize("encoder", ["separate", "shared"])
def test_image_policies_refuse_a_vector_observation(policy, encoder):
    kwargs = {"policy_kwargs": {"features_extractor_kwargs": {"cnn": "nature"}}}
    with pytest.raises(ValueError, match=r"needs an image observation.*use 'MlpPolicy'"):
        TD3CNN(policy, "Pendulum-v1", encoder=encoder, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"actor_lr": "1e-3"}, "actor_lr"),
        ({"critic_lr": float("nan")}, "critic_lr"),
        ({"learning_rate": "0.001"}, "learning_rate"),
        ({"actor_grad_clip": True}, "actor_grad_clip"),
        ({"critic_grad_clip": False}, "critic_grad_clip"),
        ({"preact_penalty": True}, "preact_penalty"),
    ],
)
def test_wrongly_typed_arguments_name_the_argument(image_env, kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        make_model(image_env, **kwargs)


def test_schedules_and_numpy_floats_are_accepted(image_env):
    model = make_model(image_env, actor_lr=lambda progress: 1e-3 * progress, critic_lr=np.float32(1e-3))
    assert model.actor_lr_schedule(0.5) == pytest.approx(5e-4)


def test_the_env_frame_stack_reaches_the_encoder():
    from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

    env = VecFrameStack(DummyVecEnv([lambda: make_image_env(channels=1)]), n_stack=3)
    model = make_model(env)
    assert model.replay_buffer.frames == 3 and model.critic.features_extractor.frames == 3
    with pytest.raises(ValueError, match="frames=2, but the env stacks 3 frames"):
        make_model(env, policy_kwargs={"features_extractor_kwargs": {**TINY_ENCODER, "frames": 2}})


def test_frame_stack_buffer_on_a_single_frame_is_an_error_not_a_fallback():
    with pytest.raises(ValueError, match="replay_buffer='frame_stack' needs observations that stack >= 2 frames"):
        make_model(make_image_env(channels=3), replay_buffer="frame_stack")


@pytest.mark.parametrize("encoder", ["separate", "shared"])
def test_actor_loss_leaves_every_critic_gradient_alone(encoder):
    """The actor step needs dQ/da only: critic heads and encoder keep exactly the critic loss's gradients."""
    model = make_model(encoder=encoder, learning_starts=1000)
    model.learn(40)
    model.policy_delay = 1
    critic = [p for group in model.critic.optimizer.param_groups for p in group["params"]]
    after_critic: list[th.Tensor | None] = []
    unchanged: list[bool] = []
    model.critic.optimizer.register_step_post_hook(
        lambda opt, args, kwargs: after_critic.__setitem__(slice(None), [p.grad.clone() for p in critic])
    )
    model.actor.optimizer.register_step_pre_hook(  # after the actor backward
        lambda opt, args, kwargs: unchanged.append(all(th.equal(g, p.grad) for g, p in zip(after_critic, critic, strict=True)))
    )
    model.train(gradient_steps=2, batch_size=8)
    assert unchanged == [True, True]


@pytest.mark.parametrize("encoder", ["separate", "shared"])
def test_policy_q_matches_q1_forward_in_value_and_actor_gradient(encoder):
    model = make_model(encoder=encoder, learning_starts=1000)
    model.learn(40)
    obs = model.replay_buffer.sample(8).observations
    actor_input = model.policy.encode(obs).detach() if encoder == "shared" else obs
    grads = []
    for score in (model._policy_q, model.critic.q1_forward):
        model.actor.optimizer.zero_grad(set_to_none=True)
        actions, _ = model._actor_forward(actor_input)
        q = score(actor_input, actions)
        (-q.mean()).backward()
        grads.append((q.detach(), [p.grad.clone() for p in model.actor.parameters()]))
    assert th.equal(grads[0][0], grads[1][0])
    assert all(th.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(grads[0][1], grads[1][1], strict=True))

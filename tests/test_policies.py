"""TD3CNN's policies: the pooled CNN+GRU default, Dict observations end to end, the CPU cost warning."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import make_image_env
from gymnasium import spaces
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from sb3_carla_td3 import TD3CNN, CnnGruExtractor
from sb3_carla_td3 import td3_cnn as td3_cnn_module


class TinyDictEnv(gym.Env):
    """A 4-frame 36x36 image plus a 3-float vector; reward favours actions close to the vector's first entries."""

    observation_space = spaces.Dict(
        {
            "image": spaces.Box(0, 255, (4, 36, 36), np.uint8),
            "vector": spaces.Box(-1.0, 1.0, (3,), np.float32),
        }
    )
    action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.steps = 0
        return self.observation_space.sample(), {}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.steps += 1
        obs = self.observation_space.sample()
        reward = -float(np.abs(action - obs["vector"][:2]).sum())
        return obs, reward, False, self.steps >= 20, {}


def test_cnn_policy_defaults_to_the_recipe_encoder_shared_and_256_256_heads():
    model = TD3CNN("CnnPolicy", make_image_env(), buffer_size=100, device="cpu")
    encoder = model.policy.encoder
    assert model.encoder == "shared" and isinstance(encoder, CnnGruExtractor)
    assert (encoder.cnn_type, encoder.rnn_type, encoder.image_features_dim) == ("nature", None, 50)
    assert encoder.cnn.center_pixels and encoder.trunk is not None
    assert encoder.frames == 1  # the env does not say it stacks frames: the stacked CNN reads all 4 channels at once
    assert model.policy.net_arch == [256, 256]


@pytest.mark.parametrize("encoder", ["shared", "separate"])
def test_pixels_are_centred_alone_and_raw_beside_a_vector_unless_asked(encoder):
    # The two measured recipes: pixels alone centred (a live first conv layer), camera + vector uncentred.
    image_only = TD3CNN("CnnPolicy", make_image_env(), buffer_size=100, encoder=encoder, device="cpu")
    with_vector = TD3CNN("MultiInputPolicy", TinyDictEnv(), buffer_size=100, encoder=encoder, device="cpu")
    asked = TD3CNN("MultiInputPolicy", TinyDictEnv(), buffer_size=100, encoder=encoder, device="cpu",
                   policy_kwargs={"features_extractor_kwargs": {"center_pixels": True}})  # fmt: skip

    def centred(model: TD3CNN) -> bool:
        extractor = model.policy.encoder if encoder == "shared" else model.critic.features_extractor
        return extractor.cnn.center_pixels

    assert (centred(image_only), centred(with_vector), centred(asked)) == (True, False, True)


def test_pooled_gru_preset_is_one_argument_and_needs_a_stated_frame_count():
    env = VecFrameStack(DummyVecEnv([lambda: make_image_env(channels=1)]), 4)
    model = TD3CNN("CnnPolicy", env, buffer_size=100, policy_kwargs={"encoder_preset": "pooled_gru"}, device="cpu")
    encoder = model.policy.encoder
    assert (encoder.cnn_type, encoder.rnn_type, encoder.frames, encoder.rnn.hidden_size) == ("pooled", "gru", 4, 48)
    with pytest.raises(ValueError, match=r"per-frame encoder \(rnn='gru'\).*4-channel image.*frames=N"):
        TD3CNN("CnnPolicy", make_image_env(), buffer_size=100, policy_kwargs={"encoder_preset": "pooled_gru"})
    with pytest.raises(ValueError, match="encoder_preset must be one of"):
        TD3CNN("CnnPolicy", make_image_env(), buffer_size=100, policy_kwargs={"encoder_preset": "resnet"})


def test_policy_kwargs_override_the_defaults():
    kwargs = {"net_arch": [32], "features_extractor_kwargs": {"cnn": "nature", "rnn": None, "cnn_features": 16}}
    model = TD3CNN("CnnPolicy", make_image_env(), buffer_size=100, policy_kwargs=kwargs, device="cpu")
    assert model.policy.net_arch == [32] and model.policy.encoder.cnn.linear[0].out_features == 16


def test_share_features_extractor_is_refused_with_the_alternative():
    with pytest.raises(ValueError, match="encoder='shared'"):
        TD3CNN("CnnPolicy", make_image_env(), buffer_size=100, policy_kwargs={"share_features_extractor": True})


@pytest.mark.parametrize("encoder", ["separate", "shared"])
def test_dict_observation_trains_end_to_end(encoder):
    kwargs = {"net_arch": [16], "features_extractor_kwargs": {"cnn_features": 16, "rnn_hidden": 8, "vector_mlp": [8]}}
    model = TD3CNN("MultiInputPolicy", TinyDictEnv(), buffer_size=200, learning_starts=30, batch_size=8,
                   policy_kwargs=kwargs, encoder=encoder, seed=0, device="cpu")  # fmt: skip
    critic_encoder = model.policy.encoder if encoder == "shared" else model.critic.features_extractor
    assert isinstance(critic_encoder, CnnGruExtractor) and critic_encoder.vector_keys == ("vector",)
    before = [p.detach().clone() for p in critic_encoder.parameters()]
    model.learn(50)
    after = list(critic_encoder.parameters())
    assert all(not th.equal(a, b) for a, b in zip(before, after, strict=True))
    assert model.last_train_stats.critic_cnn_grad_norm_pre > 0


def test_pooled_encoder_on_cpu_warns_once_with_the_measured_time(monkeypatch):
    monkeypatch.setattr(td3_cnn_module, "SLOW_STEP_WARNING_S", 0.0)
    extractor = {"cnn_features": 8, "rnn_hidden": 4, "frames": 4}
    kwargs = {"net_arch": [8], "encoder_preset": "pooled_gru", "features_extractor_kwargs": extractor}
    model = TD3CNN("CnnPolicy", make_image_env(), buffer_size=100, learning_starts=20, batch_size=4,
                   policy_kwargs=kwargs, device="cpu")  # fmt: skip
    assert model.encoder == "shared"  # the warning reads the shared encoder, not the heads' flatten layer
    with pytest.warns(RuntimeWarning, match=r"one gradient step takes \d+\.\d+ s on CPU .*encoder_preset='nature'") as record:
        model.learn(30)
    assert sum("one gradient step takes" in str(w.message) for w in record) == 1


def test_nature_encoder_gets_no_cost_warning(monkeypatch):
    monkeypatch.setattr(td3_cnn_module, "SLOW_STEP_WARNING_S", 0.0)
    kwargs = {"net_arch": [8], "features_extractor_kwargs": {"cnn": "nature", "rnn": None, "cnn_features": 8}}
    model = TD3CNN("CnnPolicy", make_image_env(), buffer_size=100, learning_starts=20, batch_size=4,
                   policy_kwargs=kwargs, device="cpu")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        model.learn(30)


def _critic_layer_norms(model: TD3CNN) -> list[th.nn.LayerNorm]:
    critics = (model.policy.critic, model.policy.critic_target)
    return [m for critic in critics for m in critic.modules() if isinstance(m, th.nn.LayerNorm)]


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_critic_layer_norm_puts_a_layer_norm_after_every_hidden_layer_of_both_critics(policy):
    env = gym.make("Pendulum-v1") if policy == "MlpPolicy" else make_image_env(36, 4)
    kwargs = {"net_arch": [32, 16]} if policy == "MlpPolicy" else {"net_arch": [32, 16], "encoder_preset": "nature"}
    plain = TD3CNN(policy, env, policy_kwargs=kwargs, buffer_size=100, seed=0)
    normed = TD3CNN(policy, env, policy_kwargs={**kwargs, "critic_layer_norm": True}, buffer_size=100, seed=0)
    trunk_norms = len(_critic_layer_norms(plain))  # the image trunk's own LayerNorm, if any, is not the critic's
    # 2 critics x 2 hidden layers, in the critic and in its target
    assert len(_critic_layer_norms(normed)) - trunk_norms == 2 * 2 * 2
    q_net = normed.policy.critic.q_networks[0]
    kinds = [type(m).__name__ for m in q_net]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU", "Linear"]
    assert normed.policy.critic.qf0 is q_net  # registered: the optimizer and state_dict see the new layers
    critic_params = {id(p) for g in normed.critic.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in critic_params for p in q_net.parameters())
    target = normed.policy.critic_target.q_networks[0]
    assert all(th.equal(a, b) for a, b in zip(q_net.parameters(), target.parameters(), strict=True))


def test_critic_layer_norm_survives_save_and_load_and_trains_with_several_steps_per_env_step(tmp_path):
    model = TD3CNN(
        "MlpPolicy",
        "Pendulum-v1",
        policy_kwargs={"net_arch": [32, 32], "critic_layer_norm": True},
        gradient_steps=4,
        learning_starts=50,
        batch_size=32,
        buffer_size=1000,
        seed=0,
    )
    model.learn(80)
    assert model._n_updates == 4 * 30  # an update-to-data ratio of 4
    model.save(tmp_path / "model.zip")
    loaded = TD3CNN.load(tmp_path / "model.zip")
    assert loaded.policy.critic_layer_norm
    obs = th.as_tensor(np.zeros((1, 3), np.float32))
    action = th.zeros((1, 1))
    assert th.allclose(loaded.policy.critic(obs, action)[0], model.policy.critic(obs, action)[0])

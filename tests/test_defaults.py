"""TD3CNN's defaults: the measured recipe where the spaces tell, SB3's TD3 one documented argument set away."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_ENCODER, make_image_env
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack
from stable_baselines3.td3.policies import TD3Policy

from sb3_carla_td3 import TD3CNN, CnnGruExtractor
from sb3_carla_td3 import td3_cnn as td3_cnn_module
from sb3_carla_td3.buffers import DictFrameStackReplayBuffer, FrameStackReplayBuffer, replay_bytes_per_transition
from sb3_carla_td3.errors import ReplayMemoryError
from sb3_carla_td3.policies import CnnPolicy, SharedEncoderPolicy
from sb3_carla_td3.reports import hyperparameter_report
from sb3_carla_td3.td3_cnn import PLAIN_TD3

SMALL = {"buffer_size": 200, "device": "cpu"}


def test_exploration_noise_is_gaussian_0_1_unless_none_is_asked_for():
    model = TD3CNN("CnnPolicy", make_image_env(), **SMALL)
    assert isinstance(model.action_noise, NormalActionNoise)
    assert model.action_noise._sigma.tolist() == [0.1] * 5 and model.action_noise._mu.tolist() == [0.0] * 5
    assert TD3CNN("CnnPolicy", make_image_env(), action_noise=None, **SMALL).action_noise is None
    with pytest.raises(ValueError, match="action_noise must be an ActionNoise, None"):
        TD3CNN("CnnPolicy", make_image_env(), action_noise="gaussian", **SMALL)


def test_image_defaults_are_the_recipe_and_vector_defaults_keep_sb3_batch():
    model = TD3CNN("CnnPolicy", make_image_env(), **SMALL)
    assert (model.preact_penalty, model.batch_size, model.learning_starts, model.encoder) == (0.1, 96, 500, "shared")
    assert isinstance(model.policy, SharedEncoderPolicy)
    mlp = TD3CNN("MlpPolicy", "Pendulum-v1", **SMALL)
    assert (mlp.batch_size, mlp.encoder, mlp.preact_penalty) == (256, "separate", 0.1)


def test_hyperparameter_report_names_every_default_that_differs_from_sb3_td3():
    report = hyperparameter_report(TD3CNN("CnnPolicy", make_image_env(), **SMALL), reference="sb3_td3").as_dict()
    differs = {name for name, row in report.items() if row["status"] == "DIFFERS"}
    expected = {"batch_size", "exploration_noise", "learning_starts", "actor_grad_clip", "critic_grad_clip"}
    assert differs == expected | {"preact_penalty", "encoder", "buffer_size"}  # buffer_size: SMALL's 200
    assert report["center_pixels"]["value"] is True and report["image_features"]["value"] == 50


def test_plain_td3_gives_back_sb3_defaults_and_the_card_encoder():
    env = VecFrameStack(DummyVecEnv([lambda: make_image_env(channels=1)]), 4)
    model = TD3CNN("CnnPolicy", env, device="cpu", **PLAIN_TD3)
    report = hyperparameter_report(model, reference="sb3_td3").as_dict()
    differs = {name for name, row in report.items() if row["status"] == "DIFFERS"}
    assert differs == {"actor_grad_clip", "critic_grad_clip"}  # TD3CNN's verified clipping stays on
    extractor = model.critic.features_extractor
    assert isinstance(extractor, CnnGruExtractor) and not isinstance(model.policy, SharedEncoderPolicy)
    assert (extractor.cnn_type, extractor.rnn_type, extractor.frames, extractor.trunk) == ("pooled", "gru", 4, None)
    assert not extractor.cnn.center_pixels


@pytest.mark.parametrize("policy", ["CnnPolicy", CnnPolicy])
def test_auto_encoder_is_shared_for_a_policy_name_and_its_class(policy):
    model = TD3CNN(policy, make_image_env(), **SMALL)
    assert model.encoder == "shared" and isinstance(model.policy, SharedEncoderPolicy)
    separate = TD3CNN(policy, make_image_env(), encoder="separate", **SMALL)
    assert separate.encoder == "separate" and not isinstance(separate.policy, SharedEncoderPolicy)


def test_encoder_mode_that_a_policy_class_cannot_have_raises():
    with pytest.raises(ValueError, match="contradicts the shared-encoder policy class SharedEncoderPolicy"):
        TD3CNN(SharedEncoderPolicy, make_image_env(), encoder="separate", **SMALL)
    kwargs = {"features_extractor_class": CnnGruExtractor, "features_extractor_kwargs": dict(TINY_ENCODER)}
    with pytest.raises(ValueError, match="would train separate encoders"):
        TD3CNN(TD3Policy, make_image_env(), encoder="shared", policy_kwargs=kwargs, **SMALL)
    assert TD3CNN(TD3Policy, make_image_env(), policy_kwargs=kwargs, **SMALL).encoder == "separate"


def test_auto_buffer_fits_half_the_available_memory(monkeypatch):
    monkeypatch.setattr(td3_cnn_module, "available_memory", lambda: 2 * 2**30)
    env = make_image_env(size=84, channels=4)  # an 84x84x4 image the env does not announce as a frame stack
    model = TD3CNN("CnnPolicy", env, device="cpu")
    per_transition = 2 * 84 * 84 * 4  # obs and next_obs, SB3's ReplayBuffer
    assert type(model.replay_buffer) is ReplayBuffer
    assert 0 < model.buffer_size * per_transition <= 2**30 and model.buffer_size % 1000 == 0
    assert model.buffer_size > 0.9 * 2**30 / per_transition - 1000


def test_a_buffer_that_does_not_fit_is_refused_before_allocation(monkeypatch):
    monkeypatch.setattr(td3_cnn_module, "available_memory", lambda: 2**30)

    def no_allocation(*args, **kwargs):
        raise AssertionError("the buffer was allocated before the memory check")

    monkeypatch.setattr(ReplayBuffer, "__init__", no_allocation)
    with pytest.raises(ReplayMemoryError, match=r"buffer_size=1,000,000 .* needs 52\.6 GiB.* 1\.0 GiB available.*"
                                                r"at most 19,0\d\d would fit.*VecFrameStack"):  # fmt: skip
        TD3CNN("CnnPolicy", make_image_env(size=84, channels=4), buffer_size=1_000_000, device="cpu")


@pytest.mark.parametrize("kind", ["sb3", "frame_stack", "dict_frame_stack"])
def test_memory_estimate_matches_the_allocated_arrays(kind):
    from test_policies import TinyDictEnv

    if kind == "dict_frame_stack":
        env = TinyDictEnv()
        kwargs = {"replay_buffer": "frame_stack", "policy_kwargs": {"features_extractor_kwargs": {"frames": 2}}}
        expected_class: type = DictFrameStackReplayBuffer
    elif kind == "frame_stack":
        env = VecFrameStack(DummyVecEnv([lambda: make_image_env(channels=1)]), 4)
        kwargs, expected_class = {}, FrameStackReplayBuffer
    else:
        env, kwargs, expected_class = make_image_env(), {}, ReplayBuffer
    model = TD3CNN("MultiInputPolicy" if kind.startswith("dict") else "CnnPolicy", env, buffer_size=5000,
                   device="cpu", **kwargs)  # fmt: skip
    buffer = model.replay_buffer
    assert type(buffer) is expected_class
    estimate = replay_bytes_per_transition(
        expected_class, model.observation_space, model.action_space, model.replay_buffer_kwargs
    )
    arrays = [v for v in vars(buffer).values() if isinstance(v, np.ndarray)]
    arrays += [a for d in vars(buffer).values() if isinstance(d, dict) for a in d.values() if isinstance(a, np.ndarray)]
    allocated = sum(a.nbytes for a in arrays) / buffer.buffer_size
    assert estimate == pytest.approx(allocated, rel=0.05)


@pytest.mark.slow
def test_the_one_liner_trains_exactly_as_the_camera_vector_recipe():
    """TD3CNN("MultiInputPolicy", env, seed=s) with nothing else is configs/carracing_camera_vector.yaml, bit for bit:
    the recipe's measured seeds (docs/results.md, sections 5 and 6) are the one-liner's."""
    import copy
    from pathlib import Path

    import torch as th
    import yaml

    from sb3_carla_td3.config import config_from_dict
    from sb3_carla_td3.envs import CarRacingConfig, CarRacingEnv
    from sb3_carla_td3.validation.runner import build_model, make_vec_env

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "carracing_camera_vector.yaml").read_text())
    data["run"]["seed"] = 1
    config = config_from_dict(copy.deepcopy(data), source="carracing_camera_vector.yaml")
    th.set_num_threads(1)
    recipe = build_model(config, make_vec_env(config, seed=1))
    recipe.learn(560)  # 500 random steps, then 60 gradient updates
    env_options = {key: value for key, value in data["env"].items() if key != "name"}
    one_liner = TD3CNN("MultiInputPolicy", CarRacingEnv(CarRacingConfig.from_dict(env_options)), seed=1)
    one_liner.learn(560)
    assert recipe._n_updates == one_liner._n_updates == 60
    ours, theirs = one_liner.policy.state_dict(), recipe.policy.state_dict()
    assert ours.keys() == theirs.keys() and all(th.equal(ours[k], theirs[k]) for k in ours)

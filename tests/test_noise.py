"""Tests for sb3_carla_td3.noise: the linearly decaying Gaussian exploration noise."""

from __future__ import annotations

import numpy as np
import pytest

from sb3_carla_td3.config import config_from_dict
from sb3_carla_td3.noise import LinearDecayNormalNoise


def make_noise(sigma: float = 0.4, final: float = 0.1, steps: int = 10) -> LinearDecayNormalNoise:
    return LinearDecayNormalNoise(np.zeros(2), np.full(2, sigma), np.full(2, final), steps)


def test_std_decays_linearly_then_stays_at_the_final_value() -> None:
    noise = make_noise()
    sigmas = []
    for _ in range(15):
        sigmas.append(float(noise.current_sigma[0]))
        noise()
    np.testing.assert_allclose(sigmas[:11], np.linspace(0.4, 0.1, 11))
    assert sigmas[11:] == pytest.approx([0.1] * 4)


def test_draws_have_the_scheduled_std() -> None:
    np.random.seed(0)
    noise = make_noise(sigma=1.0, final=0.01, steps=5000)
    early = np.array([noise() for _ in range(500)])
    for _ in range(4500):
        noise()
    late = np.array([noise() for _ in range(500)])
    assert 0.85 < early.std() < 1.0 and late.std() < 0.02
    assert early.dtype == np.float32 and early.shape == (500, 2)


def test_episode_reset_does_not_restart_the_schedule() -> None:
    noise = make_noise()
    for _ in range(5):
        noise()
    noise.reset()
    assert noise.current_sigma[0] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_sigma": np.full(3, 0.1)}, "one shape"),
        ({"sigma": np.full(2, -0.1)}, ">= 0"),
        ({"decay_steps": 0}, "decay_steps"),
        ({"decay_steps": 2.5}, "decay_steps"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    args = {"mean": np.zeros(2), "sigma": np.full(2, 0.3), "final_sigma": np.full(2, 0.1), "decay_steps": 10} | kwargs
    with pytest.raises(ValueError, match=message):
        LinearDecayNormalNoise(**args)


def test_config_builds_the_schedule_only_when_a_final_std_is_set() -> None:
    constant = config_from_dict({"td3": {"exploration_noise": 0.3}}).model_kwargs(n_actions=2)["action_noise"]
    assert not isinstance(constant, LinearDecayNormalNoise)
    data = {"td3": {"exploration_noise": 0.3, "exploration_noise_final": 0.05, "exploration_noise_decay_steps": 7}}
    noise = config_from_dict(data).model_kwargs(n_actions=2)["action_noise"]
    assert isinstance(noise, LinearDecayNormalNoise)
    for _ in range(7):
        noise()
    np.testing.assert_allclose(noise.current_sigma, [0.05, 0.05])

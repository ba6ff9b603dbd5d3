"""Patience is counted in env steps: the same misbehaviour is flagged within the same window of env steps whether the
algorithm measures itself (TD3CNN, read after every actor update) or is scored on replay samples (SB3's TD3 and SAC,
every ``check_freq`` env steps)."""

from __future__ import annotations

from typing import Any

import pytest
import torch as th
from stable_baselines3 import SAC, TD3

from sb3_carla_td3.callbacks import ActionSaturationCallback, ActorVariationCallback
from sb3_carla_td3.callbacks.measurement import Persistence
from sb3_carla_td3.health import TrainingHealthWarning
from sb3_carla_td3.td3_cnn import TD3CNN

LEARNING_STARTS, PATIENCE, CHECK_FREQ = 50, 60, 10


def frozen(algorithm: type, **kwargs: Any) -> Any:
    """A tiny model whose actor never moves (learning rate ~0) on Pendulum, so a pinned actor stays pinned."""
    params: dict[str, Any] = {"learning_starts": LEARNING_STARTS, "batch_size": 16, "learning_rate": 1e-12, "seed": 0,
                              "device": "cpu", "policy_kwargs": {"net_arch": [16]}}  # fmt: skip
    if algorithm is TD3CNN:
        params |= {"preact_penalty": 0.0, "actor_grad_clip": None, "critic_grad_clip": None}
    return algorithm("MlpPolicy", "Pendulum-v1", **params | kwargs)


def last_linear(model: Any) -> th.nn.Linear:
    network = model.actor.mu
    return network if isinstance(network, th.nn.Linear) else [m for m in network if isinstance(m, th.nn.Linear)][-1]


def pin(model: Any) -> None:
    """Every deterministic action at +1 (TD3's tanh output; SAC's mean action)."""
    with th.no_grad():
        last_linear(model).weight.zero_()
        last_linear(model).bias.fill_(50.0)


def blind(model: Any) -> None:
    """Every deterministic action the same (0.3), whatever the observation."""
    with th.no_grad():
        last_linear(model).weight.zero_()
        last_linear(model).bias.fill_(0.3)


@pytest.mark.parametrize("algorithm", [TD3CNN, TD3, SAC])
def test_a_saturated_actor_is_flagged_within_the_same_env_step_window(algorithm):
    model = frozen(algorithm)
    pin(model)
    check = ActionSaturationCallback(patience_steps=PATIENCE, check_freq=CHECK_FREQ)
    with pytest.warns(TrainingHealthWarning, match="actor saturated"):
        model.learn(200, callback=check)
    # Saturated from the first check on: the alarm lands patience_steps after learning starts, plus at most one
    # check_freq for a replay-scored algorithm.
    assert LEARNING_STARTS + PATIENCE <= check.saturated_at_step <= LEARNING_STARTS + PATIENCE + CHECK_FREQ
    assert check.verdict().passed is False


@pytest.mark.parametrize("algorithm", [TD3CNN, TD3, SAC])
def test_a_blind_actor_is_flagged_within_the_same_env_step_window(algorithm):
    model = frozen(algorithm)
    blind(model)
    check = ActorVariationCallback(patience_steps=PATIENCE, warmup_steps=20, check_freq=CHECK_FREQ)
    with pytest.warns(TrainingHealthWarning, match="actor blind"):
        model.learn(250, callback=check)
    start = LEARNING_STARTS + 20
    assert start + PATIENCE <= check.blind_at_step <= start + PATIENCE + CHECK_FREQ


@pytest.mark.parametrize("algorithm", [TD3CNN, TD3, SAC])
def test_a_healthy_actor_is_not_flagged(algorithm):
    model = frozen(algorithm)
    check = ActionSaturationCallback(patience_steps=PATIENCE, check_freq=CHECK_FREQ)
    model.learn(150, callback=check)
    assert check.saturated_at_step is None and check.verdict().passed is True


def test_persistence_counts_from_the_last_passing_check():
    persistence = Persistence(patience_steps=10)
    persistence.start = 100
    assert [persistence.update(failing, step) for failing, step in [(True, 104), (False, 106), (True, 108),
            (True, 114), (True, 116)]] == [False, False, False, False, True]  # fmt: skip
    assert persistence.held(116) == 10 and persistence.failing_checks == 3


def test_a_single_failing_check_with_no_patience_raises_the_alarm():
    persistence = Persistence(patience_steps=0)
    assert persistence.update(True, 5) is True

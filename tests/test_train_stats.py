"""TrainStats: one typed record of training statistics, filled by TD3CNN.train() and by replay scoring alike."""

from __future__ import annotations

import dataclasses

import pytest
import torch as th
from conftest import make_model
from sb3_contrib import TQC
from stable_baselines3 import DDPG, SAC, TD3

from sb3_carla_td3.q_scoring import score_replay
from sb3_carla_td3.td3_cnn import TD3CNN
from sb3_carla_td3.train_stats import (
    FIELDS,
    TrainStats,
    action_spread,
    latest_train_stats,
    measures_itself,
    q_statistics,
    saturation_share,
    side_field,
)

#: Fields a replay score fills: the Q and actor statistics (losses and gradient norms exist only inside train()).
REPLAY_FIELDS = {"q1_mean", "q2_mean", "q_max", "q_min", "target_q_mean", "target_q_max", "actor_q_mean",
                 "actor_saturation", "actor_action_std"}  # fmt: skip


def test_td3cnn_train_fills_every_field(filled_model):
    filled_model.train(gradient_steps=2, batch_size=8)
    stats = filled_model.last_train_stats
    assert isinstance(stats, TrainStats)
    assert [name for name in sorted(FIELDS) if getattr(stats, name) is None] == []
    assert (stats.n_updates, stats.n_critic_updates, stats.n_actor_updates) == (2, 2, 1)


def test_a_record_refuses_a_name_that_is_not_a_field():
    with pytest.raises(TypeError, match="'q_maxx'"):
        TrainStats().updated({"q_maxx": 1.0})
    with pytest.raises(KeyError, match="critic_saturation"):
        side_field("critic", "saturation")
    with pytest.raises(dataclasses.FrozenInstanceError):
        TrainStats().q_max = 1.0  # type: ignore[misc]


def test_the_recorded_form_reads_back_to_the_same_record(filled_model):
    filled_model.train(gradient_steps=2, batch_size=8)
    stats = filled_model.last_train_stats
    record = {"timestep": 40.0, **stats.record()}
    assert TrainStats.from_record(record) == stats
    assert TrainStats().record() == {"n_updates": 0.0}  # fields never measured are left out, not written as 0


def test_a_0_1_0_checkpoint_dict_loads_as_a_record(filled_model, tmp_path):
    filled_model.train(gradient_steps=2, batch_size=8)
    expected = filled_model.last_train_stats
    filled_model.last_train_stats = expected.record()  # what 0.1.0 kept and saved: a dict keyed by field name
    filled_model.save(tmp_path / "old.zip")
    loaded = TD3CNN.load(tmp_path / "old.zip", device="cpu")
    assert loaded.last_train_stats == expected


def test_one_function_decides_where_statistics_come_from():
    assert measures_itself(make_model()) and not measures_itself(TD3("MlpPolicy", "Pendulum-v1", device="cpu"))
    assert latest_train_stats(make_model()) is None  # before the first train() call
    assert latest_train_stats(TD3("MlpPolicy", "Pendulum-v1", device="cpu")) is None


@pytest.mark.parametrize("algorithm", [SAC, TD3, DDPG, TQC])
def test_replay_scoring_fills_the_q_and_actor_fields_for_any_algorithm(algorithm):
    model = algorithm("MlpPolicy", "Pendulum-v1", learning_starts=40, batch_size=16, policy_kwargs={"net_arch": [16]},
                      seed=0, device="cpu")  # fmt: skip
    model.learn(60)
    stats = score_replay(model, 32)
    assert stats is not None and stats.n_updates == model._n_updates
    expected = REPLAY_FIELDS - ({"target_q_mean", "target_q_max"} if algorithm is TQC else set())
    expected -= {"q2_mean"} if algorithm is DDPG else set()  # DDPG has one critic
    assert {name for name in FIELDS if getattr(stats, name) is not None} == expected | {"n_updates"}
    assert 0.0 <= stats.actor_saturation <= 1.0 and stats.actor_action_std >= 0.0
    assert stats.q_min <= stats.q1_mean <= stats.q_max


def test_the_statistics_functions_on_a_known_batch():
    actions = th.tensor([[1.0, 0.0], [-0.995, 0.5], [0.2, 0.5], [0.2, 0.5]])
    assert float(saturation_share(actions)) == pytest.approx(2 / 8)
    assert float(action_spread(actions)) == pytest.approx(float(actions[:, 0].std(correction=0)))
    q1, q2, target = th.tensor([[1.0], [3.0]]), th.tensor([[-2.0], [0.0]]), th.tensor([[0.5], [1.5]])
    stats = {name: float(value) for name, value in q_statistics((q1, q2), target).items()}
    assert stats == {"q1_mean": 2.0, "q2_mean": -1.0, "q_max": 3.0, "q_min": -2.0, "target_q_mean": 1.0,
                     "target_q_max": 1.5}  # fmt: skip
    assert set(q_statistics((q1,), None)) == {"q1_mean", "q_max", "q_min"}

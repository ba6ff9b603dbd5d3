"""hyperparameter_report on SB3's other off-policy actor-critics, and a TD3-paper reference that holds only the paper's."""

from __future__ import annotations

import numpy as np
import pytest
from sb3_contrib import TQC
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.noise import NormalActionNoise

from sb3_carla_td3.reports import REFERENCES, hyperparameter_report


def build(algorithm: type, **kwargs):
    return algorithm("MlpPolicy", "Pendulum-v1", policy_kwargs={"net_arch": [8]}, device="cpu", **kwargs)


@pytest.mark.parametrize("algorithm", [SAC, TD3, DDPG, TQC])
@pytest.mark.parametrize("reference", sorted(REFERENCES))
def test_report_reads_back_any_off_policy_actor_critic(algorithm, reference):
    model = build(algorithm, learning_rate=3e-4, batch_size=64)
    rows = hyperparameter_report(model, reference=reference).as_dict()
    assert rows["actor_lr"]["value"] == 3e-4 and rows["critic_lr"]["value"] == 3e-4
    assert rows["batch_size"]["value"] == 64 and rows["batch_size"]["status"] == "DIFFERS"
    assert rows["gamma"]["status"] == "ok"


@pytest.mark.parametrize("algorithm", [SAC, TQC])
def test_a_setting_the_algorithm_does_not_have_is_not_a_deviation(algorithm):
    rows = hyperparameter_report(build(algorithm)).as_dict()
    for name in ("policy_delay", "target_policy_noise", "target_noise_clip"):
        assert rows[name]["value"] is None and rows[name]["status"] == "-", (name, rows[name])


def test_td3_with_the_papers_settings_matches_the_paper_row_for_row():
    noise = NormalActionNoise(np.zeros(1), np.full(1, 0.1))
    model = build(TD3, batch_size=100, learning_starts=1_000, action_noise=noise)
    report = hyperparameter_report(model, reference="td3_paper", strict=True)  # strict: raises on any deviation
    statuses = {name: row["status"] for name, row in report.as_dict().items() if name in REFERENCES["td3_paper"]}
    assert set(statuses.values()) == {"ok"}
    assert "1,000 or 10,000" in str(report)  # the paper's start steps: 1,000, or 10,000 on HalfCheetah and Ant


def test_the_paper_reference_lists_no_clip_limit():
    """Fujimoto et al. 2018 clip no gradients: the clip limits are this library's, not the paper's."""
    paper = REFERENCES["td3_paper"]
    assert "actor_grad_clip" not in paper and "critic_grad_clip" not in paper
    assert paper["learning_starts"] == (1_000, 10_000)
    assert {k: paper[k] for k in ("actor_lr", "batch_size", "tau", "policy_delay", "target_policy_noise",
            "target_noise_clip", "exploration_noise", "buffer_size")} == {"actor_lr": 1e-3, "batch_size": 100, "tau": 0.005,
            "policy_delay": 2, "target_policy_noise": 0.2, "target_noise_clip": 0.5, "exploration_noise": 0.1,
            "buffer_size": 1_000_000}  # fmt: skip

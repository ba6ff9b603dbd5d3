"""Typed YAML config: unknown keys, types and ranges fail loudly; every key reaches the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import make_image_env

from sb3_carla_td3 import TD3CNN, ConfigError, hyperparameter_report, load_config
from sb3_carla_td3.config import TD3Config, config_from_dict
from sb3_carla_td3.reports import REFERENCES

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

# Task 4 of the seed action plan, verbatim (comments shortened).
SEED_TD3_BLOCK = """
td3:
  actor_lr: 0.001     # 1e-3 (TD3 paper standard)
  critic_lr: 0.001    # CHANGE from 1e-4 to 1e-3
  batch_size: 100
  gamma: 0.99
  tau: 0.005
  policy_noise: 0.2
  noise_clip: 0.5
  policy_delay: 2
  exploration_noise: 0.1
  buffer_size: 1000000
  start_steps: 25000
  actor_grad_clip: 1.0
  critic_grad_clip: 10.0
run:
  total_timesteps: 50000
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_seed_block_loads_exactly_as_written(tmp_path):
    td3 = load_config(write(tmp_path, SEED_TD3_BLOCK)).td3
    assert (td3.actor_lr, td3.critic_lr, td3.batch_size, td3.gamma, td3.tau) == (1e-3, 1e-3, 100, 0.99, 0.005)
    assert (td3.target_policy_noise, td3.target_noise_clip, td3.policy_delay) == (0.2, 0.5, 2)
    assert (td3.exploration_noise, td3.buffer_size, td3.learning_starts) == (0.1, 1_000_000, 25_000)
    assert (td3.actor_grad_clip, td3.critic_grad_clip) == (1.0, 10.0)


def test_unknown_key_names_file_key_and_closest_valid_key(tmp_path):
    path = write(tmp_path, "td3:\n  critc_lr: 0.001\n")
    with pytest.raises(ConfigError, match=r"config\.yaml: td3: unknown key 'critc_lr'; did you mean 'critic_lr'"):
        load_config(path)


def test_unknown_section_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match="unknown section 'algorithm'"):
        load_config(write(tmp_path, "algorithm:\n  gamma: 0.99\n"))


def test_unknown_env_option_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"env: unknown key 'image_sise'; did you mean 'image_size'"):
        load_config(write(tmp_path, "env:\n  name: carracing\n  image_sise: 64\n"))


def test_unknown_env_name_lists_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="carracing, carla"):
        load_config(write(tmp_path, "env:\n  name: torcs\n"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("gamma: 1.5", r"gamma=1\.5 is out of range: allowed \(0, 1\]"),
        ("gamma: 0", r"gamma=0\.0 is out of range"),
        ("tau: 0", r"tau=0\.0 is out of range: allowed \(0, 1\]"),
        ("critic_lr: -0.001", r"critic_lr=-0\.001 is out of range: allowed > 0"),
        ("learning_rate: 0", r"learning_rate=0\.0 is out of range"),
        ("batch_size: 0", r"batch_size=0 is out of range: allowed >= 1"),
        ("actor_grad_clip: 0", r"actor_grad_clip=0\.0 is out of range"),
        ("buffer_size: 10", r"buffer_size=10 is out of range: allowed >= batch_size \(100\)"),
    ],
)
def test_values_out_of_range_are_rejected(tmp_path, line, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"td3:\n  {line}\n"))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("batch_size: 100.5", r"td3\.batch_size: expected int, got 100\.5"),
        ("gamma: fast", r"td3\.gamma: expected float, got 'fast'"),
        ("actor_grad_clip: true", r"td3\.actor_grad_clip"),
        ("batch_size: [100]", r"td3\.batch_size: expected int"),
    ],
)
def test_wrong_types_are_rejected(tmp_path, line, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"td3:\n  {line}\n"))


def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    """PyYAML reads 1e-3 as a string; a float field accepts it."""
    assert load_config(write(tmp_path, "td3:\n  critic_lr: 1e-4\n")).td3.critic_lr == pytest.approx(1e-4)


def test_alias_and_canonical_name_together_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="alias"):
        load_config(write(tmp_path, "td3:\n  start_steps: 100\n  learning_starts: 200\n"))


def test_learning_starts_beyond_the_budget_warns(tmp_path):
    with pytest.warns(UserWarning, match="no gradient update will happen"):
        load_config(write(tmp_path, "td3:\n  learning_starts: 25000\nrun:\n  total_timesteps: 5000\n"))


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


#: Run configs only: tune_*.yaml are search spaces, loaded against a base config in tests/test_tuning.py.
RUN_CONFIGS = sorted(path for path in CONFIGS.glob("*.yaml") if not path.name.startswith("tune_"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    saved = config.save(tmp_path / "effective.yaml")
    assert config_from_dict(yaml.safe_load(saved.read_text())).to_dict() == config.to_dict()


def test_td3_paper_config_matches_the_reference_table():
    td3 = load_config(CONFIGS / "td3_paper.yaml").td3
    reference = REFERENCES["td3_paper"]
    fields = {f.name for f in dataclasses.fields(TD3Config)}
    expected = {key: value for key, value in reference.items() if key in fields}
    expected["train_freq"] = int(expected["train_freq"].split()[0])  # "1 step" in the report, 1 in the config
    assert td3.learning_starts in expected.pop("learning_starts")  # the paper gives 1,000 or 10,000
    assert {key: getattr(td3, key) for key in expected} == expected


def test_every_td3_and_encoder_key_reaches_the_model_kwargs():
    """A key added to the config but never read (the original system's bug) fails here."""
    config = config_from_dict({})
    kwargs = config.model_kwargs(n_actions=2)
    extractor = kwargs["policy_kwargs"]["features_extractor_kwargs"]
    noise_fields = {"exploration_noise", "exploration_noise_final", "exploration_noise_decay_steps"}  # -> action_noise
    unread_td3 = [f.name for f in dataclasses.fields(TD3Config) if f.name not in kwargs and f.name not in noise_fields]
    assert unread_td3 == []
    assert kwargs["action_noise"]._sigma.tolist() == [0.1, 0.1]
    policy_fields = {"net_arch", "critic_layer_norm"}
    encoder_fields = {f.name for f in dataclasses.fields(config.encoder)} - {"mode", "frames"} - policy_fields
    assert encoder_fields <= set(extractor)
    assert kwargs["encoder"] == config.encoder.mode
    assert all(kwargs["policy_kwargs"][name] == getattr(config.encoder, name) for name in policy_fields)


def test_hyperparameter_report_reads_back_what_the_optimizers_hold(tmp_path):
    config = load_config(CONFIGS / "seed_broken.yaml")
    kwargs = config.model_kwargs(n_actions=5)
    tiny = {"net_arch": [8], "features_extractor_kwargs": {"cnn": "nature", "rnn": None}}
    kwargs.update(buffer_size=300, policy_kwargs=tiny)
    model = TD3CNN("CnnPolicy", make_image_env(), **kwargs)
    model.critic.optimizer.param_groups[0]["lr"] = 0.123  # changed behind the config's back
    rows = hyperparameter_report(model).as_dict()
    assert rows["critic_lr"]["value"] == 0.123 and rows["critic_lr"]["status"] == "DIFFERS"
    assert rows["actor_lr"]["status"] == "ok"
    assert rows["gamma"]["value"] == 0.9 and rows["gamma"]["status"] == "DIFFERS"
    assert rows["batch_size"]["value"] == 256
    with pytest.raises(ConfigError, match=r"gamma=0\.9"):
        hyperparameter_report(model, strict=True)


def test_carla_waypoint_file_is_relative_to_the_config_file(tmp_path):
    (tmp_path / "routes").mkdir()
    path = tmp_path / "carla.yaml"
    path.write_text("env:\n  name: carla\n  route:\n    waypoint_file: routes/town01.csv\n")
    config = load_config(path)
    assert config.env.options.route.waypoint_file == str(tmp_path / "routes" / "town01.csv")


def test_monitor_defaults_match_the_callbacks_defaults():
    """One set of defaults: the YAML section and the callbacks must not drift apart."""
    import inspect

    from sb3_carla_td3.callbacks import ActionSaturationCallback, EpisodeCollapseCallback, QValueCallback, RewardTrendCallback
    from sb3_carla_td3.config import MonitorConfig

    def defaults(cls):
        return {name: p.default for name, p in inspect.signature(cls).parameters.items()}

    monitor, q, episodes, rewards = MonitorConfig(), defaults(QValueCallback), defaults(EpisodeCollapseCallback), defaults(
        RewardTrendCallback
    )
    saturation = defaults(ActionSaturationCallback)
    pairs = [
        (monitor.q_bound_margin, q["margin"]), (monitor.q_atol, q["atol"]), (monitor.q_growth_factor, q["growth_factor"]),
        (monitor.q_check_freq, q["check_freq"]), (monitor.q_samples, q["n_samples"]),
        (monitor.collapse_fraction, episodes["fraction"]), (monitor.collapse_patience, episodes["patience"]),
        (monitor.collapse_window, episodes["window"]), (monitor.baseline_episodes, episodes["baseline_episodes"]),
        (monitor.baseline_length, episodes["baseline_length"]),
        (monitor.reward_window, rewards["window"]), (monitor.reward_tolerance, rewards["tolerance"]),
        (monitor.saturation_max_fraction, saturation["max_fraction"]),
        (monitor.saturation_patience_steps, saturation["patience_steps"]),
    ]  # fmt: skip
    assert [a for a, b in pairs if a != b] == []

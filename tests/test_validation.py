"""Validation runs: reports, plots, atomic checkpoints, resume after an interruption."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback

from sb3_carla_td3.config import RunConfig, config_from_dict
from sb3_carla_td3.validation import checkpoints
from sb3_carla_td3.validation.evaluation import DrivingEvalCallback
from sb3_carla_td3.validation.phases import phase1
from sb3_carla_td3.validation.runner import summarize, train

TINY = {
    "env": {"name": "carracing", "image_size": 36, "max_episode_steps": 40, "offtrack_steps": 10, "stuck_steps": 15},
    "encoder": {"cnn": "nature", "rnn": None, "cnn_features": 16, "net_arch": [16]},
    "td3": {"batch_size": 8, "buffer_size": 500, "learning_starts": 50},
    "run": {"total_timesteps": 150, "eval_freq": 0, "checkpoint_freq": 0, "progress_bar": False, "device": "cpu",
            "threads": 1},
    "monitor": {"baseline_episodes": 2, "collapse_window": 2, "reward_window": 3, "q_check_freq": 50},
}


def tiny_config(**sections: dict) -> RunConfig:
    data = {key: dict(value) for key, value in TINY.items()}
    for key, value in sections.items():
        data[key].update(value)
    return config_from_dict(data, source="tiny test config")


class InterruptAt(BaseCallback):
    """Raise KeyboardInterrupt (what Ctrl-C does) at a given timestep."""

    def __init__(self, timestep: int) -> None:
        super().__init__()
        self.timestep = timestep

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.timestep:
            raise KeyboardInterrupt
        return True


class Holder(BaseCallback):
    """Keeps what a callback factory was given, and counts its steps."""

    def __init__(self, health: BaseCallback, evaluation: DrivingEvalCallback | None) -> None:
        super().__init__()
        self.health, self.evaluation = health, evaluation

    def _on_step(self) -> bool:
        return True


@pytest.mark.parametrize("eval_freq", [0, 1000])
def test_callback_factories_get_the_runs_own_health_and_evaluation_callbacks(tmp_path, eval_freq):
    built: list[Holder] = []

    def factory(health, evaluation):
        built.append(Holder(health, evaluation))
        return built[-1]

    config = tiny_config(run={"total_timesteps": 60, "eval_freq": eval_freq})  # 1000: built, never due
    result = train(config, tmp_path, callback_factories=[factory])
    assert len(built) == 1 and built[0].health is result.health and built[0].n_calls == 60
    if eval_freq:
        assert isinstance(built[0].evaluation, DrivingEvalCallback) and built[0].evaluation.eval_freq == eval_freq
    else:
        assert built[0].evaluation is None


def test_phase1_report_holds_the_seed_table_verdict_and_plots(tmp_path):
    report = phase1(tiny_config(), tmp_path)
    text = (tmp_path / "report.md").read_text()
    for metric in ("Actor gradient norm after clipping", "Critic gradient norm after clipping", "Q-values",
                   "Episode rewards", "Episode length"):  # fmt: skip
        assert metric in text
    assert f"**Verdict: {report.verdict}**" in text
    assert "| actor_lr | 0.001 | 0.001 | ok |" in text  # hyperparameter report read back from the model
    data = json.loads((tmp_path / "report.json").read_text())
    actor_row = data["rows"][0]
    assert actor_row["status"] in ("PASS", "FAIL") and float(actor_row["measured"]) <= 1.0 + 1e-4
    assert data["data"]["summary"]["updates"] == 100  # 150 steps, learning starts after 50
    for name in ("gradient_norms.png", "q_values.png", "episode_length.png", "episode_return.png", "config.yaml",
                 "progress.csv", "history.json"):  # fmt: skip
        assert (tmp_path / name).stat().st_size > 0
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_ctrl_c_writes_a_checkpoint_and_resume_continues_from_it(tmp_path):
    config = tiny_config(run={"total_timesteps": 160, "checkpoint_freq": 100})
    first = train(config, tmp_path, callbacks=[InterruptAt(130)])
    assert first.status == "interrupted"
    latest = checkpoints.latest_checkpoint(tmp_path / "checkpoints")
    assert latest is not None and latest["timesteps"] == 130
    updates_before = first.model._n_updates

    resumed = train(None, tmp_path, resume=True)
    assert resumed.resumed_from == 130 and resumed.status == "completed"
    assert resumed.model.num_timesteps == 160
    assert resumed.model._n_updates == updates_before + 30
    assert resumed.recorder.updates[0]["timestep"] <= 130  # history continued, not restarted


class TerminateAt(BaseCallback):
    """Send this process a real SIGTERM (``kill``, a scheduler's stop) at a given timestep."""

    def __init__(self, timestep: int) -> None:
        super().__init__()
        self.timestep = timestep

    def _on_step(self) -> bool:
        if self.num_timesteps == self.timestep:
            os.kill(os.getpid(), signal.SIGTERM)
        return True


def test_sigterm_saves_like_ctrl_c_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    config = tiny_config(run={"total_timesteps": 160, "checkpoint_freq": 100})
    first = train(config, tmp_path, callbacks=[TerminateAt(120)])
    assert first.status == "interrupted"
    latest = checkpoints.latest_checkpoint(tmp_path / "checkpoints")
    assert latest is not None and latest["timesteps"] == 120
    assert signal.getsignal(signal.SIGTERM) == before  # the process's own handler is back after train()
    summary = summarize(train(None, tmp_path, resume=True))
    assert summary["status"] == "completed" and (summary["timesteps"], summary["session_timesteps"]) == (160, 40)


def test_a_resumed_run_keeps_the_health_failures_of_its_first_part(tmp_path):
    """Interrupted after a health alarm and resumed: the final verdict still holds the alarm, with its timestep."""
    # The tiny config's actor saturates within ~80 updates; 10 env steps of saturated checks (5 actor updates) raise the alarm.
    config = tiny_config(run={"total_timesteps": 160, "checkpoint_freq": 100}, monitor={"saturation_patience_steps": 10})
    with pytest.warns(UserWarning, match="actor saturated"):
        first = train(config, tmp_path, callbacks=[InterruptAt(130)])
    failed_at = first.health.saturation.saturated_at_step
    assert first.status == "interrupted" and failed_at is not None and failed_at < 130
    assert first.health.verdict()["actor_saturation"].passed is False

    resumed = train(None, tmp_path, resume=True)
    assert resumed.status == "completed" and resumed.resumed_from == 130
    verdict = resumed.health.verdict()["actor_saturation"]
    assert verdict.passed is False and f"saturated from timestep {failed_at}" in verdict.detail
    # The Q bound's reward scale is carried over, not rebuilt from the last 30 steps.
    assert resumed.health.q_values.max_abs_reward >= first.health.q_values.max_abs_reward
    assert resumed.health.episodes.baseline == first.health.episodes.baseline


def test_resume_without_checkpoint_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_config(), tmp_path, resume=True)


def test_checkpoint_is_never_left_half_written(tmp_path, monkeypatch):
    config = tiny_config(run={"total_timesteps": 60})
    model = train(config, tmp_path / "run").model
    directory = tmp_path / "ckpt"
    good = checkpoints.save_checkpoint(model, directory)

    def crash_mid_write(path, *args, **kwargs):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", crash_mid_write)
    model.num_timesteps += 10
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_checkpoint(model, directory)
    assert checkpoints.latest_checkpoint(directory)["model"] == good
    assert sorted(p.name for p in directory.glob("model_*.zip")) == [good.name]


def test_replay_buffer_travels_with_the_checkpoint_when_asked(tmp_path):
    config = tiny_config(run={"total_timesteps": 100, "checkpoint_freq": 100, "save_replay_buffer": True})
    result = train(config, tmp_path)
    latest = checkpoints.latest_checkpoint(tmp_path / "checkpoints")
    assert latest["replay_buffer"].is_file()
    resumed = train(tiny_config(run={"total_timesteps": 120}), tmp_path, resume=True)
    assert resumed.model.replay_buffer.size() == result.model.replay_buffer.size() + 20


def test_phase2_compares_the_three_architectures_and_judges_each_claim(tmp_path):
    from sb3_carla_td3.validation.phases import ARCHITECTURES, phase2

    config = tiny_config(run={"total_timesteps": 90}, encoder={"cnn_features": 8, "rnn_hidden": 4}, td3={"batch_size": 4})
    report = phase2(config, tmp_path)
    claims = [row.metric for row in report.rows]
    assert any("Faster convergence" in c for c in claims) and any("Smoother gradient flow" in c for c in claims)
    assert any("Lower memory" in c for c in claims)
    measured = report.data["architectures"]
    assert list(measured) == [label for label, _ in ARCHITECTURES]
    assert all(r["updates"] == 40 and r["peak_rss_mb"] > 0 for r in measured.values())
    gru, lstm = measured["pooled + GRU-48"], measured["pooled + LSTM-256"]
    assert gru["encoder_parameters"]["cnn"] == lstm["encoder_parameters"]["cnn"]  # identical CNNs, only the RNN differs
    assert (tmp_path / "report.md").is_file()


def test_phase_examples_run_through_the_library_api(tmp_path):
    import importlib.util
    import sys

    import yaml

    config_path = tmp_path / "tiny.yaml"
    data = {key: dict(value) for key, value in TINY.items()}
    config_path.write_text(yaml.safe_dump(data))
    root = Path(__file__).resolve().parent.parent / "examples"
    for name in ("phase1_validation", "phase3_training"):
        spec = importlib.util.spec_from_file_location(name, root / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        status = module.main(["--config", str(config_path), "--timesteps", "80", "--out", str(tmp_path / name)])
        assert status in (0, 1)
        assert (tmp_path / name / "report.md").is_file()


def test_report_says_why_episodes_ended(tmp_path):
    report = phase1(tiny_config(), tmp_path)
    ends = report.data["summary"]["episode_ends"]
    assert ends and set(ends) <= {"stuck", "offtrack", "max_steps", "lap_complete", "out_of_playfield"}
    assert sum(ends.values()) == report.data["summary"]["episodes"]
    assert "why episodes ended: " in (tmp_path / "report.md").read_text()


def test_evaluation_logs_eval_keys_against_physics_frames_and_plots_them(tmp_path):
    config = tiny_config(env={"action_repeat": 4}, run={"eval_freq": 75, "eval_episodes": 1})
    report = phase1(config, tmp_path)
    evaluations = json.loads((tmp_path / "eval" / "evaluations.json").read_text())["evaluations"]
    assert [e["timestep"] for e in evaluations] == [75, 150]
    assert [e["physics_frames"] for e in evaluations] == [300, 600]
    # CarRacing-v3's own episode: 1,000 physics frames, no off-track or stuck ending (the tiny config has both).
    assert all(length == 250 for e in evaluations for length in e["lengths"])
    progress = (tmp_path / "progress.csv").read_text().splitlines()[0].split(",")
    assert {"eval/mean_return", "eval/std_return", "eval/physics_frames"} <= set(progress)
    assert (tmp_path / "eval_return.png").stat().st_size > 0
    assert "Evaluation (deterministic" in (tmp_path / "report.md").read_text()
    assert report.data["summary"]["timesteps"] == 150


def test_evaluation_uses_the_same_fresh_tracks_every_time(tmp_path):
    from stable_baselines3.common.logger import configure

    from sb3_carla_td3.validation.runner import build_model, evaluation_callback, make_vec_env

    config = tiny_config(env={"image_obs": False, "vector_obs": True}, run={"eval_freq": 10, "eval_episodes": 2})
    callback = evaluation_callback(config, tmp_path)
    model = build_model(config, make_vec_env(config, 0))
    model.set_logger(configure(None, []))
    callback.init_callback(model)
    first, second = callback.evaluate(), callback.evaluate()
    assert first["returns"] == second["returns"]  # same policy, same tracks: same returns
    assert first["returns"][0] != first["returns"][1]  # two different tracks


def test_evaluation_keeps_the_best_model_and_a_resumed_run_knows_its_best(tmp_path, monkeypatch):
    from stable_baselines3.common.logger import configure

    from sb3_carla_td3.validation import evaluation as evaluation_module
    from sb3_carla_td3.validation.report import evaluation_row
    from sb3_carla_td3.validation.runner import build_model, evaluation_callback, make_vec_env

    means = iter([10.0, 30.0, 20.0, 40.0])
    monkeypatch.setattr(evaluation_module, "run_episodes", lambda *args: ([next(means)], [250], []))
    config = tiny_config(env={"image_obs": False, "vector_obs": True}, run={"eval_freq": 10, "eval_episodes": 1})
    model = build_model(config, make_vec_env(config, 0))
    model.set_logger(configure(None, []))
    callback = evaluation_callback(config, tmp_path)
    callback.init_callback(model)
    best_file = tmp_path / "best_model.zip"
    saved = []
    for timestep in (10, 20, 30, 40):
        model.num_timesteps = callback.num_timesteps = timestep
        with th.no_grad():  # a different policy at every evaluation, so that each save is told apart
            next(model.policy.actor.parameters()).add_(1.0)
        callback.evaluate()
        saved.append(best_file.read_bytes())
    assert callback.best_mean_return == 40.0
    assert [bool(r.get("best")) for r in callback.results] == [True, True, False, True]
    assert saved[2] == saved[1] and saved[3] != saved[2]  # 20 < 30: the file kept the 30 model
    assert "best 40 at timestep 40 (best_model.zip)" in evaluation_row(callback.results).detail

    assert evaluation_callback(config, tmp_path).best_mean_return == 40.0  # resumed: read back from the log
    best_file.unlink()
    assert evaluation_callback(config, tmp_path).best_mean_return == float("-inf")  # nothing saved to beat


def _evaluation(timestep: int, returns: list[float]) -> dict:
    return {"timestep": timestep, "returns": returns, "mean_return": float(np.mean(returns))}


def test_kept_policy_row_fails_a_real_late_collapse_only():
    from sb3_carla_td3.validation.report import kept_policy_row

    rng = np.random.default_rng(0)
    track = rng.normal(0.0, 30.0, size=10)  # each track's own difficulty, the same in every evaluation
    start, best = _evaluation(10, list(track - 50.0)), _evaluation(20, list(track + 800.0))

    collapse = kept_policy_row([start, best, _evaluation(30, list(track + 500.0))])
    assert collapse.passed is False and collapse.status == "FAIL"
    assert "churned" in collapse.detail and "timestep 20" in collapse.detail

    # A real but small loss (3 % of the gain) passes: what stable runs lose by their end.
    assert kept_policy_row([start, best, _evaluation(30, list(track + 775.0))]).passed is True
    # A large drop in the mean that the same tracks do not confirm (one track crashed) is noise, not churn.
    one_crash = track + 800.0
    one_crash[3] = -1500.0
    noisy = kept_policy_row([start, best, _evaluation(30, list(one_crash))])
    assert noisy.passed is True and "within evaluation noise" in noisy.detail
    # The same drop as the collapse fails only above the share: 300 of a gain of 850 is 35 %.
    assert kept_policy_row([start, best, _evaluation(30, list(track + 500.0))], max_drop_share=0.4).passed is True

    assert kept_policy_row([start, best]).passed is True  # the last is the best
    decline = kept_policy_row([best, _evaluation(20, list(track + 700.0))])  # never better than the first
    assert decline.passed is False and "the best is the first evaluation" in decline.detail
    assert kept_policy_row([best]) is None  # one evaluation: nothing to compare
    unpaired = kept_policy_row([start, best, _evaluation(30, list(track[:5]))])
    assert unpaired.passed is None and not unpaired.applies


def test_evaluation_row_passes_a_run_that_learned_before_its_first_evaluation_and_held():
    from sb3_carla_td3.validation.report import evaluation_row

    rng = np.random.default_rng(1)
    track = rng.normal(0.0, 30.0, size=10)
    flat_high = [_evaluation(10, list(track + 768.0)), _evaluation(20, list(track + 766.5 + rng.normal(0, 20, 10)))]
    assert evaluation_row(flat_high).passed is False  # without the warm-up's return: strictly increasing
    held = evaluation_row(flat_high, start_return=-75.0)
    assert held.passed is True and "within evaluation noise" in held.detail
    slightly_lower = [flat_high[0], _evaluation(20, list(track + 740.0))]  # real, but 3 % of the gain: held
    assert evaluation_row(slightly_lower, start_return=-75.0).passed is True
    collapsed = [flat_high[0], _evaluation(20, list(track + 500.0))]
    assert evaluation_row(collapsed, start_return=-75.0).passed is False  # a real drop is not "held"
    never_learned = [_evaluation(10, list(track - 90.0)), _evaluation(20, list(track - 91.0))]
    assert evaluation_row(never_learned, start_return=-75.0).passed is False  # flat, but flat at the start


def test_phase3_report_carries_the_kept_policy_row(tmp_path):
    from sb3_carla_td3.validation.phases import phase3

    config = tiny_config(env={"image_obs": False, "vector_obs": True}, run={"eval_freq": 40, "eval_episodes": 1})
    report = phase3(config, tmp_path)
    metrics = [row.metric for row in report.rows]
    assert metrics[-2:] == ["Evaluation return (deterministic)", "Kept policy: last evaluation against the best"]
    assert "Kept policy" in (tmp_path / "report.md").read_text()


def test_vector_only_env_trains_an_mlp_policy(tmp_path):
    from stable_baselines3.common.policies import ContinuousCritic
    from stable_baselines3.td3.policies import TD3Policy

    from sb3_carla_td3.policies import LayerNormCritic, MlpPolicy

    config = tiny_config(env={"image_obs": False, "vector_obs": True})
    result = train(config, tmp_path)
    assert type(result.model.policy) is MlpPolicy and isinstance(result.model.policy, TD3Policy)
    assert type(result.model.critic) is ContinuousCritic  # SB3's critic unless the config asks for LayerNorm
    assert result.model.num_timesteps == 150 and result.model.last_train_stats.n_updates == 100

    vector, layer_norm = {"image_obs": False, "vector_obs": True}, {"critic_layer_norm": True}
    utd = tiny_config(env=vector, encoder=layer_norm, td3={"gradient_steps": 2})
    result = train(utd, tmp_path / "utd")
    assert type(result.model.critic) is LayerNormCritic
    assert result.model.last_train_stats.n_updates == 200  # two gradient steps per env step after the warm-up


def test_vector_only_env_with_a_shared_encoder_names_the_problem(tmp_path):
    from sb3_carla_td3.errors import ConfigError

    config = tiny_config(env={"image_obs": False, "vector_obs": True}, encoder={"mode": "shared"})
    with pytest.raises(ConfigError, match=r"encoder\.mode='shared' needs an image observation"):
        train(config, tmp_path)


@pytest.mark.parametrize(
    ("returns", "reasons", "passed"),
    [
        ([-80.0] * 5 + [0.0] * 5 + [300.0] * 5, ["offtrack"] * 15, True),
        ([-80.0] * 5 + [0.0] * 5 + [-10.0] * 5, ["stuck"] * 10 + ["offtrack"] * 5, False),  # learned to stop
        ([-80.0] * 5 + [0.0] * 5 + [300.0] * 5, ["stuck"] * 8 + ["max_steps"] * 7, False),  # rises, mostly stuck
        ([-80.0] * 5 + [0.0] * 5 + [10.0] * 5, ["offtrack"] * 15, False),  # rise below 100
    ],
)
def test_learning_row_needs_a_real_rise_not_standing_still(returns, reasons, passed):
    from sb3_carla_td3.validation.report import learning_row

    row = learning_row([{"return": r, "reason": why} for r, why in zip(returns, reasons, strict=True)])
    assert row.passed is passed, row.detail


@pytest.mark.parametrize(
    ("passed", "applies", "verdict"),
    [
        ([True, None], [True, False], "PASS"),  # a check that cannot apply (a vector env's conv layer)
        ([True, None], [True, True], "INCONCLUSIVE"),  # a check that lacked data
        ([False, None], [True, False], "FAIL"),
        ([None], [False], "INCONCLUSIVE"),  # nothing judged at all
    ],
)
def test_a_check_that_cannot_apply_does_not_hold_the_verdict_back(passed, applies, verdict):
    from sb3_carla_td3.validation.report import PhaseReport, Row

    rows = [Row("m", "e", "-", p, applies=a) for p, a in zip(passed, applies, strict=True)]
    report = PhaseReport("t", rows)
    assert report.verdict == verdict and [row.status for row in rows] == [Row("m", "e", "-", p).status for p in passed]


def test_a_vector_only_run_passes_with_its_conv_layer_row_not_applicable(tmp_path):
    from sb3_carla_td3.validation.phases import phase3

    vector, early = {"image_obs": False, "vector_obs": True}, {"variation_warmup_steps": 0}
    report = phase3(tiny_config(env=vector, run={"total_timesteps": 300}, monitor=early), tmp_path)
    *judged, dormant = report.rows
    assert dormant.metric == "First conv layer: dormant channels (share)" and "no conv layer" in dormant.detail
    assert (dormant.status, dormant.applies) == ("N/A", False)
    assert [row.status for row in judged] == ["PASS"] * len(judged)
    assert report.verdict == "PASS"  # was INCONCLUSIVE for every vector run: a row that cannot apply held it back


def test_learning_row_is_not_judged_on_too_few_episodes():
    from sb3_carla_td3.validation.report import learning_row

    assert learning_row([{"return": 1.0}] * 5).passed is None


def test_keep_last_deletes_older_checkpoints_and_learn_resumably_continues_to_the_total(tmp_path):
    from conftest import make_model

    from sb3_carla_td3 import TD3CNN

    directory = tmp_path / "checkpoints"
    env = make_model().get_env()
    model, status = checkpoints.learn_resumably(
        lambda: make_model(env, learning_starts=10), lambda path: TD3CNN.load(path, env=env), 40, directory, 15, []
    )
    assert status == "completed" and model.num_timesteps == 40
    # checkpoints at 15, 30 and the end (40); only the newest stays, with its replay buffer
    assert sorted(p.name for p in directory.glob("model_*")) == ["model_40_steps.zip", "model_40_steps_replay_buffer.pkl"]
    resumed, status = checkpoints.learn_resumably(
        lambda: pytest.fail("a run with a checkpoint must resume, not start again"),
        lambda path: TD3CNN.load(path, env=env), 70, directory, 15, [],
    )  # fmt: skip
    assert status == "completed" and resumed.num_timesteps == 70 and resumed.replay_buffer.size() == 70
    with pytest.raises(ValueError, match="keep_last must be >= 1"):
        checkpoints.save_checkpoint(resumed, directory, keep_last=0)


def test_polyak_actor_evaluation_drives_the_same_tracks_with_actor_target_and_swaps_back(tmp_path):
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    from sb3_carla_td3.policies import acting_with_target_actor
    from sb3_carla_td3.validation.runner import build_model, evaluation_callback, make_vec_env

    vector = {"image_obs": False, "vector_obs": True}
    config = tiny_config(env=vector, run={"eval_freq": 10, "eval_episodes": 2, "eval_polyak_actor": True})
    model = build_model(config, make_vec_env(config, 0))
    model.set_logger(configure(None, []))
    online, target = model.policy.actor, model.policy.actor_target
    callback = evaluation_callback(config, tmp_path)
    callback.init_callback(model)
    same = callback.evaluate()
    assert same["polyak_returns"] == same["returns"]  # at construction the target is a copy of the actor
    with th.no_grad():
        for parameter in online.parameters():
            parameter.mul_(-1.0)  # the online actor now steers and pedals the other way; the target did not move
    flipped = callback.evaluate()
    assert flipped["polyak_returns"] == same["returns"] and flipped["returns"] != same["returns"]
    assert flipped["polyak_mean_return"] == pytest.approx(np.mean(flipped["polyak_returns"]))
    assert model.policy.actor is online and model.policy.actor_target is target  # swapped back
    with pytest.raises(RuntimeError), acting_with_target_actor(model.policy):
        assert model.policy.actor is target
        raise RuntimeError("inside the block")
    assert model.policy.actor is online  # also after an exception

    sac = SAC("MlpPolicy", make_vec_env(config, 0), buffer_size=100)
    with pytest.raises(ValueError, match="actor_target"):
        evaluation_callback(config, tmp_path / "sac").init_callback(sac)

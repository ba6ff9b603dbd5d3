"""The command line: main() in-process, and one end-to-end subprocess smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch as th
import yaml
from test_validation import TINY

from sb3_carla_td3.cli import PHASE_CONFIGS, build_parser, main
from sb3_carla_td3.config import load_config

REPO = Path(__file__).resolve().parent.parent


def tiny_yaml(tmp_path: Path, **run: object) -> Path:
    data = {key: dict(value) for key, value in TINY.items()}
    data["run"].update(run)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_validate_phase1_writes_a_report_and_returns_the_verdict_when_strict(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["validate", "--phase", "1", "--config", str(tiny_yaml(tmp_path)), "--out", str(out), "--no-progress"]
    status = main([*args, "--strict"])
    printed = capsys.readouterr().out
    verdict = json.loads((out / "report.json").read_text())["verdict"]
    assert status == (1 if verdict == "FAIL" else 0)
    assert "| Actor gradient norm after clipping" in printed and f"Verdict: {verdict}" in printed


def test_command_line_overrides_reach_the_saved_effective_config(tmp_path):
    out = tmp_path / "run"
    main(["validate", "--phase", "1", "--config", str(tiny_yaml(tmp_path)), "--out", str(out), "--timesteps", "120",
          "--seed", "7", "--device", "cpu", "--no-progress"])  # fmt: skip
    effective = load_config(out / "config.yaml")
    assert (effective.run.total_timesteps, effective.run.seed, effective.run.device) == (120, 7, "cpu")
    assert effective.run.progress_bar is False


def test_report_command_prints_the_report_and_redraws_plots(tmp_path, capsys):
    out = tmp_path / "run"
    main(["validate", "--phase", "1", "--config", str(tiny_yaml(tmp_path)), "--out", str(out), "--no-progress"])
    (out / "q_values.png").unlink()
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    assert "# Phase 1 validation" in capsys.readouterr().out
    assert (out / "q_values.png").is_file()


def test_evaluate_command_runs_a_saved_model(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--config", str(tiny_yaml(tmp_path, checkpoint_freq=100)), "--out", str(out), "--no-progress"])
    model = next((out / "checkpoints").glob("model_*_steps.zip"))
    assert main(["evaluate", str(model), "--episodes", "1"]) == 0
    assert "1 episodes (tracks 2000000..2000000): return" in capsys.readouterr().out
    assert main(["evaluate", str(model), "--episodes", "3"]) == 0
    line = capsys.readouterr().out
    mean = float(line.split("return ")[1].split(" ")[0])
    low, high = (float(x) for x in line.split("CI [")[1].split("]")[0].split(", "))
    assert low <= mean <= high  # the mean's bootstrap interval over the 3 episodes
    assert main(["evaluate", str(model.with_suffix("")), "--episodes", "1"]) == 0  # SB3's own name, without .zip
    assert main(["evaluate", str(out), "--episodes", "1"]) == 0  # a run directory: its newest checkpoint
    assert "1 episodes (tracks 2000000..2000000): return" in capsys.readouterr().out


def test_evaluate_drives_the_runs_evaluation_episodes_on_held_out_tracks_by_default(tmp_path, capsys):
    from sb3_carla_td3.validation.evaluation import EVAL_SEED_OFFSET, HELD_OUT_EVAL_SEED, read_evaluations

    out = tmp_path / "run"
    config = tiny_yaml(tmp_path, total_timesteps=120, eval_freq=60, eval_episodes=2)
    main(["train", "--config", str(config), "--out", str(out), "--no-progress"])
    best = max(read_evaluations(out / "eval" / "evaluations.json"), key=lambda e: e["mean_return"])
    capsys.readouterr()
    # On the run's own evaluation tracks, the kept policy scores what its evaluation recorded: the same episodes
    # (CarRacing-v3's own, without the training env's off-track ending and penalties), not the training env's.
    assert main(["evaluate", str(out / "best_model.zip"), "--episodes", "2", "--eval-seed", str(EVAL_SEED_OFFSET)]) == 0
    printed = capsys.readouterr().out
    assert f"return {best['mean_return']:.2f} +- " in printed
    assert f"tracks {EVAL_SEED_OFFSET}..{EVAL_SEED_OFFSET + 1}" in printed
    assert main(["evaluate", str(out / "best_model.zip"), "--episodes", "2"]) == 0
    assert f"tracks {HELD_OUT_EVAL_SEED}..{HELD_OUT_EVAL_SEED + 1}" in capsys.readouterr().out


def test_evaluate_polyak_actor_acts_with_actor_target(tmp_path, capsys):
    from sb3_carla_td3 import TD3CNN

    out = tmp_path / "run"
    main(["train", "--config", str(tiny_yaml(tmp_path, checkpoint_freq=100)), "--out", str(out), "--no-progress"])
    model_file = next((out / "checkpoints").glob("model_*_steps.zip"))
    model = TD3CNN.load(model_file, device="cpu")
    model.policy.actor_target.load_state_dict(model.policy.actor.state_dict())  # the target holds the trained actor
    with th.no_grad():
        for parameter in model.policy.actor.parameters():
            parameter.mul_(-1.0)  # and the actor drives the other way
    swapped = model_file.with_name("swapped.zip")
    model.save(swapped)
    capsys.readouterr()

    def evaluate(path: Path, *flags: str) -> str:
        assert main(["evaluate", str(path), "--episodes", "2", *flags]) == 0
        return capsys.readouterr().out.strip().splitlines()[-1]

    trained = evaluate(model_file)
    assert evaluate(swapped, "--polyak-actor") == trained
    assert evaluate(swapped) != trained


@pytest.mark.parametrize("name", ["missing.zip", "missing"])
def test_evaluate_names_a_missing_model_file(tmp_path, capsys, name):
    (tmp_path / "config.yaml").write_text("run:\n  seed: 0\n")  # a config next to it must not hide the real problem
    assert main(["evaluate", str(tmp_path / name)]) == 1
    err = capsys.readouterr().err
    assert f"model file '{tmp_path / name}' does not exist" in err and ".zip.zip" not in err and "config.yaml" not in err


def test_evaluate_on_a_directory_without_checkpoints_says_so(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 1
    assert "without a checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "# only a comment\n", "{}\n"])
def test_empty_config_file_is_an_error_not_the_defaults(tmp_path, capsys, text):
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    assert main(["train", "--config", str(empty)]) == 1
    assert "the config is empty" in capsys.readouterr().err


def test_bad_config_exits_1_with_a_clear_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("td3:\n  gama: 0.99\n")
    assert main(["validate", "--phase", "1", "--config", str(bad)]) == 1
    assert "unknown key 'gama'; did you mean 'gamma'" in capsys.readouterr().err


def test_resume_extends_a_finished_run_with_timesteps_and_refuses_flags_it_would_ignore(tmp_path, capsys):
    out = tmp_path / "run"
    config = tiny_yaml(tmp_path, total_timesteps=100, checkpoint_freq=50)
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress"]) == 0
    assert main(["train", "--resume", str(out), "--timesteps", "140", "--no-progress"]) == 0  # a new total budget
    summary = json.loads((out / "report.json").read_text())["data"]["summary"]
    assert (summary["timesteps"], summary["session_timesteps"]) == (140, 40)
    assert load_config(out / "config.yaml").run.total_timesteps == 140
    capsys.readouterr()
    for flag in (["--seed", "0"], ["--set", "td3.learning_rate=0.1"], ["--device", "cpu"]):
        assert main(["train", "--resume", str(out), *flag]) == 1
        assert f"{flag[0]} cannot change it" in capsys.readouterr().err


def test_resume_is_only_for_phase_3(tmp_path, capsys):
    assert main(["validate", "--phase", "1", "--resume", str(tmp_path)]) == 1
    assert "--resume only applies to phase 3" in capsys.readouterr().err


@pytest.mark.parametrize("phase", sorted(PHASE_CONFIGS))
def test_every_phase_has_a_shipped_config_that_loads(phase):
    config = load_config(REPO / "configs" / PHASE_CONFIGS[phase])
    assert config.run.total_timesteps > config.td3.learning_starts


def test_parser_documents_the_validate_flags():
    help_text = build_parser().format_help() + build_parser()._subparsers._group_actions[0].choices["validate"].format_help()
    for flag in ("--phase", "--config", "--env", "--timesteps", "--device", "--out", "--seed", "--resume"):
        assert flag in help_text


def test_module_entry_point_smoke_run(tmp_path):
    """End to end in a fresh interpreter, as a user types it (cleanrl-style)."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "sb3_carla_td3", "validate", "--phase", "1", "--config", str(tiny_yaml(tmp_path)),
               "--out", str(out), "--timesteps", "80", "--no-progress"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-2000:]  # without --strict a finished run exits 0
    assert "Verdict:" in completed.stdout
    assert (out / "report.md").is_file()


def test_set_overrides_any_key_and_reaches_the_saved_effective_config(tmp_path):
    out = tmp_path / "run"
    main(["validate", "--phase", "1", "--config", str(tiny_yaml(tmp_path)), "--out", str(out), "--no-progress",
          "--set", "td3.preact_penalty=0.25", "--set", "env.max_brake=0.5", "--set", "encoder.trunk=8"])  # fmt: skip
    effective = load_config(out / "config.yaml")
    assert (effective.td3.preact_penalty, effective.env.options.max_brake, effective.encoder.trunk) == (0.25, 0.5, 8)
    assert json.loads((out / "report.json").read_text())["data"]["summary"]["timesteps"] == 150


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["td3.preac_penalty=0"], "unknown key 'preac_penalty'; did you mean 'preact_penalty'"),
        (["td3.preact_penalty=-1"], "preact_penalty=-1.0 is out of range"),
        (["preact_penalty=0"], "must look like SECTION.KEY=VALUE"),
        (["td3.preact_penalty"], "must look like SECTION.KEY=VALUE"),
        (["td3.gamma=0.9", "td3.gamma.x=1"], "td3.gamma is 0.9, not a section"),
    ],
)
def test_bad_set_override_exits_1_naming_the_key(tmp_path, capsys, overrides, message):
    args = ["validate", "--phase", "1", "--config", str(tiny_yaml(tmp_path))]
    for override in overrides:
        args += ["--set", override]
    assert main(args) == 1
    assert message in capsys.readouterr().err

"""Command line: ``sb3-carla-td3 validate|train|evaluate|report|tune|tune-report|doctor`` (or ``python -m sb3_carla_td3``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sb3_carla_td3.config import RunConfig, env_options_class, load_config
from sb3_carla_td3.errors import CarlaConnectionError, ConfigError

if TYPE_CHECKING:
    from sb3_carla_td3.validation.leaderboard import DrivingEpisode
    from sb3_carla_td3.validation.report import PhaseReport

#: Where the shipped configs live (the repository's top-level configs/ directory).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
PHASE_CONFIGS = {1: "phase1_validation.yaml", 2: "phase2_architecture.yaml", 3: "phase3_training.yaml"}
EXIT_FAIL, EXIT_INTERRUPTED = 1, 130


def _default_config(phase: int) -> Path:
    name = PHASE_CONFIGS[phase]
    for candidate in (Path("configs") / name, CONFIG_DIR / name):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"no --config given and the default {name} was found neither in ./configs nor in {CONFIG_DIR}")


def _apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """Command-line flags win over the file; the effective config is what gets saved with the run."""
    if getattr(args, "env", None) and args.env != config.env.name:
        config.env = dataclasses.replace(config.env, name=args.env, options=env_options_class(args.env)())
    run_overrides = {
        key: value
        for key, value in (("total_timesteps", args.timesteps), ("device", args.device), ("seed", args.seed))
        if value is not None
    }
    if getattr(args, "no_progress", False):
        run_overrides["progress_bar"] = False
    if run_overrides:
        config.run = dataclasses.replace(config.run, **run_overrides)
    RunConfig.__post_init__(config)  # re-check learning_starts against the new budget
    return config


def _resumed_config(args: argparse.Namespace) -> RunConfig | None:
    """The config of the run in ``args.resume``: its own, with ``--timesteps`` (a new budget) or ``--no-progress``.

    A resumed run keeps the config it was trained with; every other run flag would be silently ignored, so it is
    refused by name.

    :return: None when no flag changes it (the run directory's config.yaml is read as it is)
    """
    flags = {"--config": args.config, "--env": args.env, "--set": args.overrides, "--device": args.device,
             "--seed": args.seed, "--out": args.out}  # fmt: skip
    fixed = [flag for flag, value in flags.items() if value is not None and value != []]
    if fixed:
        raise ConfigError(
            f"--resume {args.resume} continues the run with its own config.yaml: {', '.join(fixed)} cannot change it "
            "(only --timesteps, a new total budget, and --no-progress apply)"
        )
    if args.timesteps is None and not args.no_progress:
        return None
    config = load_config(Path(args.resume) / "config.yaml")
    return _apply_overrides(config, args)


def _run_dir(args: argparse.Namespace, config: RunConfig, label: str) -> Path:
    if args.out:
        return Path(args.out)
    return Path(config.run.output_dir) / f"{label}-{time.strftime('%Y%m%d-%H%M%S')}"


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="run config YAML (default: the phase's file in configs/)")
    parser.add_argument("--env", choices=("carracing", "carla"), help="override env.name (its options reset to defaults)")
    parser.add_argument("--timesteps", type=int, help="override run.total_timesteps")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key, e.g. --set td3.preact_penalty=0 --set env.max_brake=1 (repeatable)",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override run.device")
    parser.add_argument("--seed", type=int, help="override run.seed")
    parser.add_argument("--out", type=Path, help="run directory (default: run.output_dir/<phase>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="print SB3's logs")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="sb3-carla-td3", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="run a validation phase of the seed plan and print its table")
    validate.add_argument("--phase", type=int, choices=(1, 2, 3), required=True)
    validate.add_argument("--resume", type=Path, metavar="RUN_DIR", help="phase 3: continue the run in RUN_DIR")
    validate.add_argument("--strict", action="store_true", help="exit with status 1 when the verdict is FAIL (for CI)")
    _add_run_flags(validate)
    train = commands.add_parser("train", help="train with a config (a phase-3 run without the phase defaults)")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument("--strict", action="store_true", help="exit with status 1 when the verdict is FAIL")
    _add_run_flags(train)
    evaluate = commands.add_parser("evaluate", help="evaluate a saved model")
    evaluate.add_argument(
        "model", type=Path, help="model .zip, or a run directory (its newest checkpoint); its run's config.yaml gives the env"
    )
    evaluate.add_argument("--episodes", type=int, default=5)
    evaluate.add_argument("--config", type=Path, help="config YAML for the env (default: config.yaml next to the run)")
    evaluate.add_argument(
        "--out", type=Path, help="CARLA: folder of report.md/report.json (default: evaluate/ next to the run's config)"
    )
    evaluate.add_argument(
        "--eval-seed", type=int, default=None,
        help="seed of the first track (default: CarRacing, tracks that no run's evaluation drove; CARLA, the "
        "run's own evaluation routes; 1000000: the run's own evaluation tracks)",
    )  # fmt: skip
    evaluate.add_argument(
        "--polyak-actor", action="store_true",
        help="act with TD3's Polyak-averaged actor (actor_target) instead of the last actor (docs/results.md, section 8)",
    )  # fmt: skip
    report = commands.add_parser("report", help="print a run's report and redraw its plots")
    report.add_argument("run_dir", type=Path)
    tune = commands.add_parser(
        "tune",
        help="hyperparameter search on Optuna; start the same command on many machines to share one study",
        description="Run (or continue) an Optuna study until it holds --n-trials finished trials (docs/tuning.md).",
    )
    tune.add_argument("--config", type=Path, required=True, help="base run config YAML")
    tune.add_argument("--space", type=Path, required=True, help="search-space YAML (params, budget, pruning, failures)")
    tune.add_argument("--n-trials", type=int, required=True, help="finished trials the study must hold (all workers)")
    tune.add_argument(
        "--storage",
        help="Optuna storage URL: journal:PATH, sqlite:///PATH, postgresql://USER@HOST:PORT/DB "
        "(default: sqlite study.db in the study folder)",
    )
    tune.add_argument("--study-name", help="study name (default: tune-<config file stem>)")
    tune.add_argument("--study-dir", type=Path, help="folder of the trial run directories (default: run.output_dir/NAME)")
    tune.add_argument("--timeout", type=float, help="seconds after which this worker starts no new trial")
    tune.add_argument("--seed", type=int, help="TPE sampler seed (give each worker its own; default: random)")
    tune.add_argument("--report", action="store_true", help="write the study report (tune-report) at the end")
    tune.add_argument("-v", "--verbose", action="count", default=0, help="print each trial (-vv: SB3's logs)")
    tune_report = commands.add_parser("tune-report", help="a study's best trials, importances, pruned trials, plots")
    tune_report.add_argument("study", type=Path, help="the study folder (holds study.json); the report is written there")
    tune_report.add_argument("--storage", help="storage URL (default: from study.json)")
    tune_report.add_argument("--study-name", help="study name (default: from study.json)")
    doctor = commands.add_parser(
        "doctor",
        help="check a live CARLA server before a run: one PASS/FAIL line per check, with the fix",
        description="Probe, versions, Traffic Manager port, settings, map, ego + camera, frame-matched ticks, tick "
        "rate, a route, and cleanup (docs/carla.md). Exit status 0 only when every check passes.",
    )
    doctor.add_argument("--host", help="server host (default: the config's, else localhost)")
    doctor.add_argument("--port", type=int, help="server RPC port (default: the config's, else 2000)")
    doctor.add_argument("--town", help="load this map if the server has another (default: keep the loaded map)")
    doctor.add_argument("--config", type=Path, help="run config YAML with a CARLA env section (ego, camera, route)")
    doctor.add_argument("--timeout", type=float, help="probe, RPC and sensor time-out in seconds (default: 10)")
    doctor.add_argument("--tm-port", type=int, help="Traffic Manager port (default: the config's, else 8000)")
    doctor.add_argument("--ticks", type=int, default=20, help="synchronous ticks of the frame check (default: 20)")
    return parser


def _validate(args: argparse.Namespace) -> int:
    from sb3_carla_td3.validation import phases

    resume = getattr(args, "resume", None)
    if resume is not None:
        if args.command == "validate" and args.phase != 3:
            raise ConfigError("--resume only applies to phase 3 (and to train)")
        report = phases.phase3(_resumed_config(args), resume, resume=True, verbose=args.verbose)
        return _print_report(report, resume, args.strict)
    phase = args.phase if args.command == "validate" else 3
    if args.config is None and args.command == "train":
        raise ConfigError("train needs --config FILE")
    config = _apply_overrides(load_config(args.config or _default_config(phase), args.overrides), args)
    run_dir = _run_dir(args, config, f"phase{phase}" if args.command == "validate" else "train")
    runners: dict[int, Callable[..., PhaseReport]] = {1: phases.phase1, 2: phases.phase2, 3: phases.phase3}
    runner = runners[phase]
    print(f"sb3-carla-td3: phase {phase} on {config.env.name}, {config.run.total_timesteps} steps -> {run_dir}")
    return _print_report(runner(config, run_dir, verbose=args.verbose), run_dir, args.strict)


def _print_report(report: PhaseReport, run_dir: Path, strict: bool) -> int:
    print()
    print(report.table())
    print(f"\nVerdict: {report.verdict}. Report: {run_dir / 'report.md'}")
    if "interrupted" in report.title:
        return EXIT_INTERRUPTED
    return EXIT_FAIL if strict and report.verdict == "FAIL" else 0


def _evaluate(args: argparse.Namespace) -> int:
    """Drive a saved model deterministically in its run's evaluation episodes (CarRacing-v3's own 1,000-frame episodes,
    or the CARLA routes), on ``--episodes`` tracks from ``--eval-seed``, and print the mean return with its interval.
    """
    from sb3_carla_td3.envs import make_env
    from sb3_carla_td3.policies import acting_with_target_actor
    from sb3_carla_td3.td3_cnn import TD3CNN
    from sb3_carla_td3.validation.evaluation import (
        EVAL_SEED_OFFSET,
        HELD_OUT_EVAL_SEED,
        evaluation_options,
        run_episodes,
    )
    from sb3_carla_td3.validation.runner import CONFIG_FILE
    from sb3_carla_td3.validation.statistics import bootstrap_mean

    model_path = _model_file(args.model)
    config_path = args.config or _find_upwards(model_path.parent, CONFIG_FILE)
    config = load_config(config_path)
    carla = config.env.name == "carla"
    seed = args.eval_seed if args.eval_seed is not None else EVAL_SEED_OFFSET if carla else HELD_OUT_EVAL_SEED
    model = TD3CNN.load(model_path, device="cpu")
    env = make_env(config.env.name, evaluation_options(config.env.options))
    try:
        predict = lambda observation: model.predict(observation, deterministic=True)[0]  # noqa: E731
        with acting_with_target_actor(model.policy, enabled=args.polyak_actor):
            returns, lengths, driving = run_episodes(predict, env, args.episodes, seed)
    finally:
        env.close()
    if carla:
        return _carla_report(model_path, config, returns, lengths, driving, args.out or config_path.parent / "evaluate")
    interval = bootstrap_mean(returns)  # a kept policy was picked on noisy evaluations: how sure is this number?
    mean = interval.value
    std = (sum((r - mean) ** 2 for r in returns) / len(returns)) ** 0.5
    print(
        f"{args.episodes} episodes (tracks {seed}..{seed + args.episodes - 1}): return {mean:.2f} +- {std:.2f} "
        f"(mean's 95 % CI [{interval.low:.2f}, {interval.high:.2f}]), length {sum(lengths) / len(lengths):.1f}"
    )
    return 0


def _carla_report(
    model_path: Path,
    config: RunConfig,
    returns: list[float],
    lengths: list[int],
    driving: list[DrivingEpisode],
    out: Path,
) -> int:
    """Score CARLA evaluation episodes as the CARLA Leaderboard scores them; the table is printed and written to
    ``out``/report.md and report.json."""
    from sb3_carla_td3.validation.leaderboard import aggregate_scores, leaderboard_table

    episodes = len(returns)
    summary = aggregate_scores(driving)
    title = f"Evaluation of {model_path} on CARLA ({config.env.options.town}), {episodes} episodes"
    table = leaderboard_table(summary)
    mean = sum(returns) / len(returns)
    print(f"{episodes} episodes: return {mean:.2f}, length {sum(lengths) / len(lengths):.1f}\n\n{table}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(f"# {title}\n\nMean return {mean:.2f}.\n\n## Leaderboard metrics\n\n{table}\n")
    payload = {"title": title, "model": str(model_path), "returns": returns, "lengths": lengths, "leaderboard": summary}
    (out / "report.json").write_text(json.dumps(payload, indent=2))
    print(f"\nReport: {out / 'report.md'}")
    return 0


def _model_file(path: Path) -> Path:
    """The model .zip that ``evaluate`` was given: a .zip file, the same without its suffix, or a run directory
    (its newest checkpoint).
    """
    from sb3_carla_td3.validation.checkpoints import latest_checkpoint
    from sb3_carla_td3.validation.runner import CHECKPOINTS

    if path.is_dir():
        record = latest_checkpoint(path / CHECKPOINTS) or latest_checkpoint(path)
        if record is None:
            raise ConfigError(f"{path} is a directory without a checkpoint ({CHECKPOINTS}/latest.json): pass a model .zip")
        return Path(record["model"])
    if path.is_file():
        return path
    with_suffix = path.with_name(path.name + ".zip")
    if path.suffix != ".zip" and with_suffix.is_file():
        return with_suffix
    raise ConfigError(
        f"model file {str(path)!r} does not exist: pass a .zip written by model.save() or a checkpoint, "
        "or a run directory (its newest checkpoint is evaluated)"
    )


def _find_upwards(start: Path, name: str) -> Path:
    for directory in (start, *start.parents):
        if (directory / name).is_file():
            return directory / name
    raise ConfigError(f"no {name} found above {start}; pass --config")


def _report(args: argparse.Namespace) -> int:
    from sb3_carla_td3.validation.plots import plot_history
    from sb3_carla_td3.validation.recorder import load_history

    report_md, report_json = args.run_dir / "report.md", args.run_dir / "report.json"
    if not report_md.is_file():
        raise ConfigError(f"{args.run_dir} has no report.md: is it a run directory of sb3-carla-td3?")
    data = json.loads(report_json.read_text()) if report_json.is_file() else {}
    config = load_config(args.run_dir / "config.yaml")
    q_bound = data.get("data", {}).get("verdicts", {}).get("q_bound", {}).get("threshold")
    limits = {"actor": config.td3.actor_grad_clip, "critic": config.td3.critic_grad_clip}
    plot_history(load_history(args.run_dir / "history.json"), args.run_dir, limits=limits, q_bound=q_bound)
    print(report_md.read_text())
    return 0


def _tune(args: argparse.Namespace) -> int:
    from sb3_carla_td3.tuning import tune, tune_report

    try:
        result = tune(args.config, args.space, args.n_trials, storage=args.storage, study_name=args.study_name,
                      study_dir=args.study_dir, timeout=args.timeout, seed=args.seed, verbose=args.verbose)  # fmt: skip
    except RuntimeError as error:  # trials kept raising in this worker: say why, without a traceback
        print(f"sb3-carla-td3: error: {error}", file=sys.stderr)
        return EXIT_FAIL
    study = result.study
    print(f"sb3-carla-td3: study {study.study_name}: {result.finished} of {args.n_trials} trials finished, "
          f"{len(result.ran)} run here; storage {result.storage}; folder {result.study_dir}")  # fmt: skip
    completed = [t for t in study.get_trials(deepcopy=False) if t.value is not None and t.state.name == "COMPLETE"]
    if completed:
        best = max(completed, key=lambda t: float(t.value or 0.0))
        print(f"best: trial {best.number}, eval return {best.value:.4g}, params {best.params}")
    if args.report:
        print(f"report: {tune_report(result.study_dir, storage=args.storage)}")
    return 0


def _tune_report(args: argparse.Namespace) -> int:
    from sb3_carla_td3.tuning import tune_report

    path = tune_report(args.study, storage=args.storage, study_name=args.study_name)
    print(path.read_text())
    print(f"Report: {path}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from sb3_carla_td3.envs.carla.config import CarlaConfig
    from sb3_carla_td3.envs.carla.doctor import run_doctor

    config = CarlaConfig()
    if args.config is not None:
        run_config = load_config(args.config)
        if not isinstance(run_config.env.options, CarlaConfig):
            raise ConfigError(f"{args.config}: env.name is {run_config.env.name!r}; doctor needs a CARLA config")
        config = run_config.env.options
    overrides = {"host": args.host, "port": args.port, "tm_port": args.tm_port, "timeout_s": args.timeout}
    config = CarlaConfig.from_dict({**config.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    print(f"sb3-carla-td3 doctor: CARLA server at {config.host}:{config.port} (time-out {config.timeout_s:g} s)", flush=True)
    if args.ticks < 1:
        raise ConfigError(f"--ticks must be >= 1, got {args.ticks}")
    try:
        results = run_doctor(config, town=args.town, ticks=args.ticks, report=lambda r: print(r.line(), flush=True))
    except ImportError as error:  # the carla client is missing: the message names the install command
        raise ConfigError(str(error)) from error
    failed = [r.name for r in results if not r.passed]
    ending = "" if len(results) > 3 else "; the later checks need a server that answers"
    failures = f" (failed: {', '.join(failed)})" if failed else ""
    print(f"{len(results) - len(failed)} of {len(results)} checks passed{failures}{ending}")
    return EXIT_FAIL if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line.

    :param argv: arguments without the program name (None: ``sys.argv[1:]``)
    :return: exit status: 0 the run finished and its report was written, 1 a bad input (or a FAIL verdict with
        ``--strict``), 130 interrupted
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("validate", "train"):
            return _validate(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "tune":
            return _tune(args)
        if args.command == "tune-report":
            return _tune_report(args)
        if args.command == "doctor":
            return _doctor(args)
        return _report(args)
    except (ConfigError, CarlaConnectionError, FileNotFoundError) as error:
        print(f"sb3-carla-td3: error: {error}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("sb3-carla-td3: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())

"""The learning results of docs/results.md: three TD3CNN configurations x three seeds on CarRacing, then the summary.

    python examples/carracing_results.py run [--out runs/results] [--jobs 2] [--timesteps N] [--seeds 0 1 2]
    python examples/carracing_results.py summarize [--out runs/results] [--docs docs/results]

``run`` trains every (configuration, seed) pair that has no report.json yet, ``--jobs`` at a time, each in a fresh
process with one torch thread (two 1-thread processes do more work on 2 cores than one 2-thread process). Every run
is a phase-1 run (:func:`sb3_carla_td3.validation.phases.phase1`), so each run directory holds its own report.md,
report.json, history.json and plots. ``summarize`` draws the curves over seeds and prints the tables.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

#: name -> (config file, overrides applied on top of it, label for tables).
SETS: dict[str, tuple[str, dict[str, dict[str, Any]], str]] = {
    "phase1": ("phase1_validation.yaml", {}, "phase-1 config (shared encoder)"),
    "seed_broken": ("seed_broken.yaml", {}, "seed_broken.yaml (gamma 0.9, critic lr 1e-4, tau 0.001, batch 256)"),
    "separate": ("phase1_validation.yaml", {"encoder": {"mode": "separate"}}, "phase-1 config, separate encoders"),
    # Follow-ups, not in the default set. Does a 10x lower actor learning rate keep the actor out of saturation?
    "actor_lr_1e-4": ("phase1_validation.yaml", {"td3": {"actor_lr": 1e-4}}, "phase-1 config, actor lr 1e-4"),
    # A follow-up: 4 physics frames per step make gamma 0.99 look 8 s ahead instead of 2 s.
    "action_repeat_4": ("phase1_validation.yaml", {"env": {"action_repeat": 4}}, "phase-1 config, action_repeat 4"),
}
#: The sets ``run`` trains unless ``--sets`` names others.
DEFAULT_SETS = ("phase1", "seed_broken", "separate")


def run_one(name: str, seed: int, run_dir: str, timesteps: int | None) -> dict[str, Any]:
    """Train one (configuration, seed) pair as a phase-1 run; return its summary (runs in a worker process)."""
    import torch as th

    from sb3_carla_td3.config import config_from_dict
    from sb3_carla_td3.validation.phases import phase1

    th.set_num_threads(1)
    file, overrides, _ = SETS[name]
    data = copy.deepcopy(_load_yaml(CONFIGS / file))
    for section, values in overrides.items():
        data.setdefault(section, {}).update(values)
    data["run"] = {**data.get("run", {}), "seed": seed, "threads": 1, "progress_bar": False}
    if timesteps is not None:
        data["run"]["total_timesteps"] = timesteps
    config = config_from_dict(data, source=f"{file} + {overrides or 'no overrides'} (examples/carracing_results.py)")
    with open(Path(run_dir).with_suffix(".log"), "w") as log:
        sys.stdout = sys.stderr = log
        report = phase1(config, run_dir)
    return {"name": name, "seed": seed, "verdict": report.verdict, **report.data["summary"]}


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def run(out: Path, jobs: int, seeds: list[int], timesteps: int | None, sets: list[str]) -> None:
    """Train the missing runs, seed by seed (so that a cut-short session still has whole seeds)."""
    out.mkdir(parents=True, exist_ok=True)
    todo = [
        (name, seed, str(out / f"{name}-s{seed}"), timesteps)
        for seed in seeds
        for name in sets
        if not (out / f"{name}-s{seed}" / "report.json").is_file()
    ]
    print(f"{len(todo)} runs to do, {jobs} at a time -> {out}", flush=True)
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(jobs, maxtasksperchild=1) as pool:
        for summary in pool.imap_unordered(_star_run_one, todo):
            minutes = (time.perf_counter() - started) / 60
            print(
                f"[{minutes:5.1f} min] {summary['name']} seed {summary['seed']}: {summary['verdict']}, "
                f"final return {summary['final_return']:.1f}, {summary['seconds']:.0f} s",
                flush=True,
            )


def _star_run_one(args: tuple[str, int, str, int | None]) -> dict[str, Any]:
    return run_one(*args)


def _runs(out: Path) -> dict[str, list[dict[str, Any]]]:
    """name -> per-seed {"seed", "report", "history", "config"} for every finished run under ``out``."""
    found: dict[str, list[dict[str, Any]]] = {name: [] for name in SETS}
    for name in SETS:
        for report_path in sorted(out.glob(f"{name}-s*/report.json")):
            history = json.loads((report_path.parent / "history.json").read_text())
            seed = int(report_path.parent.name.rsplit("-s", 1)[1])
            config = _load_yaml(report_path.parent / "config.yaml")
            found[name].append(
                {"seed": seed, "report": json.loads(report_path.read_text()), "history": history, "config": config}
            )
    return found


def summarize(out: Path, docs: Path) -> None:
    """Print the tables of docs/results.md and draw its figures into ``docs``."""
    runs = _runs(out)
    docs.mkdir(parents=True, exist_ok=True)
    print(results_table(runs))
    print()
    print(verdict_table(runs))
    print()
    print(trend_table(runs))
    for figure in draw_curves(runs, docs):
        print(f"wrote {figure}")


def _mean_std(values: list[float], digits: int = 1) -> str:
    if not values:
        return "n/a"
    std = statistics.pstdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {std:.{digits}f}"


def results_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Final return, speed, Q, clip fractions and episode ends per configuration (mean ± std over seeds)."""
    lines = [
        "| configuration | seeds | final return (last 10 ep.) | steps/s | max abs Q / bound | critic clip fraction "
        "| actor clip fraction | episode ends |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, seeds in runs.items():
        if not seeds:
            continue
        summaries = [s["report"]["data"]["summary"] for s in seeds]
        verdicts = [s["report"]["data"]["verdicts"] for s in seeds]
        q_ratio = [v["q_bound"]["value"] / v["q_bound"]["threshold"] for v in verdicts]
        ends: dict[str, int] = {}
        for summary in summaries:
            for reason, count in summary["episode_ends"].items():
                ends[reason] = ends.get(reason, 0) + count
        lines.append(
            f"| {SETS[name][2]} | {len(seeds)} | {_mean_std([s['final_return'] for s in summaries])} "
            f"| {_mean_std([s['timesteps'] / s['seconds'] for s in summaries])} | {_mean_std(q_ratio, 3)} "
            f"| {_mean_std([s['critic_clip_fraction'] for s in summaries], 4)} "
            f"| {_mean_std([s['actor_clip_fraction'] or 0.0 for s in summaries], 4)} "
            f"| {', '.join(f'{k} {v}' for k, v in sorted(ends.items(), key=lambda kv: -kv[1]))} |"
        )
    return "\n".join(lines)


def verdict_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Each health verdict per configuration: how many seeds passed, and the measured values."""
    keys = sorted({key for seeds in runs.values() for s in seeds for key in s["report"]["data"]["verdicts"]})
    lines = ["| configuration | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, seeds in runs.items():
        if not seeds:
            continue
        cells = []
        for key in keys:
            found = [s["report"]["data"]["verdicts"].get(key) for s in seeds]
            passed = sum(1 for v in found if v and v["passed"])
            values = ", ".join(f"{v['value']:.3g}" for v in found if v and v["value"] is not None)
            cells.append(f"{passed}/{len(seeds)} pass ({values})")
        lines.append(f"| {SETS[name][2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def return_trend(episodes: list[dict[str, Any]], after: float) -> tuple[float, float, float]:
    """Least-squares slope of episode return against env step for episodes ending after ``after`` steps.

    :return: (slope per 1000 steps, mean return of the first third, mean return of the last third)
    """
    chosen = [e for e in episodes if e["timestep"] > after]
    if len(chosen) < 3:
        return float("nan"), float("nan"), float("nan")
    steps = np.array([e["timestep"] for e in chosen])
    returns = np.array([e["return"] for e in chosen])
    slope = float(np.polyfit(steps / 1000.0, returns, 1)[0])
    third = max(len(chosen) // 3, 1)
    return slope, float(returns[:third].mean()), float(returns[-third:].mean())


def trend_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """Return trend per run, over the episodes that ended after learning started."""
    lines = [
        "| configuration | seed | episodes | slope (return per 1000 steps) | first third | last third |",
        "|---|---|---|---|---|---|",
    ]
    for name, seeds in runs.items():
        for s in seeds:
            learning_starts = s["config"]["td3"]["learning_starts"]
            slope, first, last = return_trend(s["history"]["episodes"], learning_starts)
            lines.append(
                f"| {SETS[name][2]} | {s['seed']} | {len(s['history']['episodes'])} | {slope:+.2f} "
                f"| {first:.1f} | {last:.1f} |"
            )
    return "\n".join(lines)


def _binned(points: list[tuple[float, float]], edges: np.ndarray) -> np.ndarray:
    """Mean of the values whose step falls in each bin (NaN where a bin is empty)."""
    steps = np.array([p[0] for p in points])
    values = np.array([p[1] for p in points])
    means = np.full(len(edges) - 1, np.nan)
    for i in range(len(edges) - 1):
        inside = (steps > edges[i]) & (steps <= edges[i + 1])
        if inside.any():
            means[i] = values[inside].mean()
    return means


def draw_curves(runs: dict[str, list[dict[str, Any]]], docs: Path) -> list[Path]:
    """Episode return, episode length, Q against the bound and clip fractions: mean over seeds, min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = max(s["report"]["data"]["summary"]["timesteps"] for seeds in runs.values() for s in seeds)
    edges = np.linspace(0, horizon, 11)
    centres = (edges[:-1] + edges[1:]) / 2
    panels = {
        "episode_return": ("episodes", "return", "episode return"),
        "episode_length": ("episodes", "length", "episode length (steps)"),
        "q_over_bound": ("updates", None, "max |Q| / bound (1 = the bound)"),
        "critic_clip_fraction": ("updates", "critic_clip_fraction", "critic clip fraction"),
        "actor_clip_fraction": ("updates", "actor_clip_fraction", "actor clip fraction"),
    }
    written = []
    for figure_name, (records, key, ylabel) in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, seeds in runs.items():
            curves = []
            for s in seeds:
                bound = s["report"]["data"]["verdicts"]["q_bound"]["threshold"]
                points = []
                for record in s["history"][records]:
                    if key is None:
                        if "q_max" in record:
                            magnitude = max(abs(record["q_max"]), abs(record.get("q_min", 0.0)))
                            magnitude = max(magnitude, abs(record.get("actor_q_mean", 0.0)))
                            points.append((record["timestep"], magnitude / bound))
                    elif key in record:
                        points.append((record["timestep"], record[key]))
                if points:
                    curves.append(_binned(points, edges))
            if not curves:
                continue
            stacked = np.vstack(curves)
            with warnings.catch_warnings():  # a bin no seed has data in stays NaN (a gap in the line)
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, low, high = (np.nanmean(stacked, 0), np.nanmin(stacked, 0), np.nanmax(stacked, 0))
            ax.plot(centres, mean, marker="o", label=f"{SETS[name][2]} ({len(curves)} seeds)")
            ax.fill_between(centres, low, high, alpha=0.2)
        if key is None:
            ax.axhline(1.0, color="red", linestyle="--", label="bound 1.5 max|r| / (1 - gamma)")
            ax.set_yscale("log")
        ax.set_xlabel("env steps")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = docs / f"{figure_name}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train the missing (configuration, seed) runs")
    run_parser.add_argument("--out", type=Path, default=Path("runs/results"))
    run_parser.add_argument("--jobs", type=int, default=2, help="runs at a time, one torch thread each")
    run_parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run_parser.add_argument("--timesteps", type=int, help="override run.total_timesteps (default: the config's)")
    run_parser.add_argument("--sets", nargs="+", choices=list(SETS), default=list(DEFAULT_SETS))
    summary_parser = commands.add_parser("summarize", help="print the tables and draw the figures")
    summary_parser.add_argument("--out", type=Path, default=Path("runs/results"))
    summary_parser.add_argument("--docs", type=Path, default=Path("docs/results"))
    args = parser.parse_args(argv)
    if args.command == "run":
        run(args.out, args.jobs, args.seeds, args.timesteps, args.sets)
    else:
        summarize(args.out, args.docs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

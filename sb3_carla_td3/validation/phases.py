"""The seed action plan's three validation phases, each a function that trains, judges and writes a report.

- Phase 1 (Tasks 1-5): a short TD3CNN run with the health callbacks and the Task 5 table.
- Phase 2 (Tasks 6-7): stacked NatureCNN vs pooled NatureCNN + GRU-48 vs pooled + LSTM-256, same seed and steps.
- Phase 3 (Task 8): a long run with evaluation, atomic checkpoints, resume and Ctrl-C handling.
"""

from __future__ import annotations

import copy
import multiprocessing
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

from sb3_carla_td3.config import RunConfig, config_from_dict
from sb3_carla_td3.extractors import CnnGruExtractor
from sb3_carla_td3.reports import hyperparameter_report, parameter_report
from sb3_carla_td3.validation.evaluation import read_evaluations
from sb3_carla_td3.validation.leaderboard import leaderboard_table
from sb3_carla_td3.validation.plots import plot_evaluations, plot_history
from sb3_carla_td3.validation.report import (
    PhaseReport,
    Row,
    evaluation_row,
    evaluation_table,
    fmt,
    kept_policy_row,
    learning_row,
    phase1_rows,
)
from sb3_carla_td3.validation.runner import EVALUATIONS_FILE, RunResult, summarize, train

#: Phase 2's architectures: (label, encoder overrides).
ARCHITECTURES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("stacked NatureCNN", {"cnn": "nature", "rnn": None}),
    ("pooled + GRU-48", {"cnn": "pooled", "rnn": "gru", "rnn_hidden": 48}),
    ("pooled + LSTM-256", {"cnn": "pooled", "rnn": "lstm", "rnn_hidden": 256}),
)


def finish_report(result: RunResult, report: PhaseReport) -> PhaseReport:
    """Add the common sections (evaluations, run facts, hyperparameter and parameter reports, plots) to a report of
    ``result`` and write report.md / report.json into its run directory.

    :param result: a finished run (from :func:`~sb3_carla_td3.validation.runner.train`)
    :param report: the report so far: title, rows and any sections of its own
    :return: ``report``, completed and written
    """
    model, verdicts = result.model, result.health.verdict()
    q_bound = verdicts["q_bound"].threshold
    limits = {"actor": model.actor_grad_clip, "critic": model.critic_grad_clip}
    plots = plot_history(result.recorder.history(), result.run_dir, limits=limits, q_bound=q_bound)
    evaluations = load_evaluations(result.run_dir)
    if evaluations:
        plots.append(plot_evaluations(evaluations, result.run_dir))
    summary = summarize(result)
    facts = (
        f"- status: {result.status}; {summary['timesteps']} env steps, {summary['updates']} gradient updates, "
        f"{summary['episodes']} episodes, {result.seconds:.0f} s"
        + (f" (resumed at {result.resumed_from})" if result.resumed_from is not None else "")
        + f"\n- config: {result.config.source or 'built in code'}; effective copy in config.yaml"
        + f"\n- device: {model.device}; encoder mode: {model.encoder}; replay buffer: {type(model.replay_buffer).__name__}"
        + f"\n- non-finite updates skipped: {summary['nonfinite_skips']}"
        + f"\n- why episodes ended: {', '.join(f'{k} {v}' for k, v in summary['episode_ends'].items()) or 'not reported'}"
    )
    if evaluations:
        heading = "Evaluation (deterministic, fresh seeded tracks, CarRacing-v3's own 1,000-frame episodes)"
        if result.config.env.name == "carla":
            heading = "Evaluation (deterministic, the same seeded routes every time)"
        report.sections.append((heading, evaluation_table(evaluations)))
        leaderboard = evaluations[-1].get("leaderboard")
        if leaderboard is not None:  # a CARLA run
            heading = f"Leaderboard metrics (CARLA, last evaluation at {evaluations[-1]['timestep']:,} steps)"
            report.sections.append((heading, leaderboard_table(leaderboard)))
            report.data["leaderboard"] = leaderboard
    report.sections += [
        ("Run", facts),
        ("Hyperparameters", str(hyperparameter_report(model)).split("\n", 2)[2]),
        ("Parameters", str(parameter_report(model)).split("\n", 2)[2]),
        ("Plots", "\n".join(f"![{p.stem}]({p.name})" for p in plots)),
    ]
    report.data |= {"summary": summary, "verdicts": {k: vars(v) for k, v in verdicts.items()}}
    report.write(result.run_dir)
    return report


#: The former private name of :func:`finish_report`.
_finish = finish_report


def phase1(config: RunConfig, run_dir: str | Path, verbose: int = 0) -> PhaseReport:
    """Phase 1: train briefly with verified clipping and judge the seed's Task 5 table.

    :param config: the run config (``configs/phase1_validation.yaml`` by default on the command line)
    :param run_dir: output directory
    :param verbose: 1 prints SB3's logs
    :return: the written report
    """
    result = train(config, run_dir, verbose=verbose)
    rows = phase1_rows(result.health.verdict(), result.model.actor_grad_clip, result.model.critic_grad_clip)
    rows.append(learning_row(result.recorder.episodes))
    title = f"Phase 1 validation: TD3CNN on {config.env.name}, {result.model.num_timesteps} steps"
    return finish_report(result, PhaseReport(title, rows))


def phase3(config: RunConfig | None, run_dir: str | Path, resume: bool = False, verbose: int = 0) -> PhaseReport:
    """Phase 3: the long run (evaluation every ``run.eval_freq``, checkpoints every ``run.checkpoint_freq``).

    :param config: the run config (None when resuming: read from the run directory)
    :param run_dir: output directory, or the run to resume
    :param resume: continue from the newest checkpoint of ``run_dir``
    :param verbose: 1 prints SB3's logs
    :return: the written report (also after Ctrl-C, with the status "interrupted")
    """
    result = train(config, run_dir, resume=resume, verbose=verbose)
    verdicts = result.health.verdict()
    rows = phase1_rows(verdicts, result.model.actor_grad_clip, result.model.critic_grad_clip)
    rows[3].expected = "increasing (positive trend)"
    evaluations = load_evaluations(Path(run_dir))
    warm_up = [e["return"] for e in result.recorder.episodes if e["timestep"] <= result.model.learning_starts]
    start_return = statistics.fmean(warm_up) if warm_up else None
    evaluation = evaluation_row(evaluations, start_return)
    rows += [row for row in (evaluation, kept_policy_row(evaluations)) if row is not None]
    title = f"Phase 3 training: TD3CNN on {result.config.env.name}, {result.model.num_timesteps} steps ({result.status})"
    return finish_report(result, PhaseReport(title, rows))


def load_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """:return: the run's evaluations (:class:`DrivingEvalCallback` results), oldest first; [] when none"""
    return read_evaluations(Path(run_dir) / EVALUATIONS_FILE)


def _run_variant(config_data: dict[str, Any], run_dir: str, verbose: int) -> dict[str, Any]:
    """Train one phase-2 architecture (in a fresh process, so that its peak memory is its own)."""
    config = config_from_dict(config_data, source="phase 2 variant")
    result = train(config, run_dir, verbose=verbose)
    extractor = result.model.critic.features_extractor
    counts = extractor.parameter_counts() if isinstance(extractor, CnnGruExtractor) else {}
    pre = [u["critic_grad_norm_pre"] for u in result.recorder.updates if "critic_grad_norm_pre" in u]
    returns = [e["return"] for e in result.recorder.episodes[-10:]]
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return summarize(result) | {
        "encoder_parameters": counts,
        "critic_grad_norm_cv": statistics.pstdev(pre) / statistics.mean(pre)
        if len(pre) > 1 and statistics.mean(pre)
        else None,
        "final_return_std": statistics.pstdev(returns) if len(returns) > 1 else None,
        "peak_rss_mb": peak_kb / 1024 if sys.platform != "darwin" else peak_kb / 2**20,
        "verdicts": {k: vars(v) for k, v in result.health.verdict().items()},
    }


def phase2(config: RunConfig, run_dir: str | Path, verbose: int = 0) -> PhaseReport:
    """Phase 2: compare the architectures with identical seeds, steps and hyperparameters.

    :param config: the base run config; its ``encoder`` section is overridden per architecture
    :param run_dir: output directory (one sub-directory per architecture)
    :param verbose: 1 prints SB3's logs
    :return: the written report, with a verdict on each of the seed's claims
    """
    run_dir = Path(run_dir)
    results: dict[str, dict[str, Any]] = {}
    context = multiprocessing.get_context("spawn")
    for label, overrides in ARCHITECTURES:
        data = copy.deepcopy(config.to_dict())
        data["encoder"].update(overrides)
        sub_dir = run_dir / label.replace(" ", "_").replace("+", "").replace("__", "_")
        with context.Pool(1) as pool:
            results[label] = pool.apply(_run_variant, (data, str(sub_dir), verbose))
    report = PhaseReport(f"Phase 2 architecture comparison on {config.env.name}", _claims(results), show_previous=False)
    report.sections.append(("Measurements", _comparison_table(results)))
    report.data = {"architectures": results}
    report.write(run_dir)
    return report


def _comparison_table(results: dict[str, dict[str, Any]]) -> str:
    headers = [
        "architecture",
        "encoder params (CNN / RNN / total)",
        "s per update",
        "peak RSS MB",
        "final return",
        "critic clip fraction",
        "actor clip fraction",
        "critic pre-clip norm CV",
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for label, r in results.items():
        c = r["encoder_parameters"]
        params = f"{c.get('cnn', 0):,} / {c.get('rnn', 0):,} / {c.get('total', 0):,}"
        cells = [
            label,
            params,
            fmt(r["seconds_per_update"]),
            fmt(r["peak_rss_mb"]),
            fmt(r["final_return"]),
            fmt(r["critic_clip_fraction"]),
            fmt(r["actor_clip_fraction"]),
            fmt(r["critic_grad_norm_cv"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _claims(results: dict[str, dict[str, Any]]) -> list[Row]:
    stacked, gru, lstm = (results[label] for label, _ in ARCHITECTURES)
    rows = []
    # "Faster convergence": more return after the same steps, beyond the noise of the last episodes.
    if gru["final_return"] is None or stacked["final_return"] is None:
        rows.append(Row("Faster convergence (pooled+GRU vs stacked)", "higher final return", "-", None))
    else:
        diff = gru["final_return"] - stacked["final_return"]
        noise = max(gru["final_return_std"] or 0.0, stacked["final_return_std"] or 0.0)
        passed = None if abs(diff) <= noise else diff > 0
        rows.append(
            Row(
                "Faster convergence (pooled+GRU vs stacked)",
                "higher final return, beyond episode noise",
                f"{fmt(gru['final_return'])} vs {fmt(stacked['final_return'])}",
                passed,
                detail=f"difference {fmt(diff)}, episode std up to {fmt(noise)} (one seed: weak evidence)",
            )
        )
    # "Smoother gradient flow": less variable pre-clip critic norms and no more clipping.
    cv_gru, cv_stacked = gru["critic_grad_norm_cv"], stacked["critic_grad_norm_cv"]
    smoother = None if cv_gru is None or cv_stacked is None else cv_gru < cv_stacked
    rows.append(
        Row(
            "Smoother gradient flow (pooled+GRU vs stacked)",
            "lower CV of pre-clip critic norm",
            f"{fmt(cv_gru)} vs {fmt(cv_stacked)}",
            smoother,
            detail=f"clip fractions critic {fmt(gru['critic_clip_fraction'])} vs {fmt(stacked['critic_clip_fraction'])}",
        )
    )
    # "Lower memory (GRU vs LSTM)" and "5.3x fewer parameters".
    p_gru, p_lstm = gru["encoder_parameters"], lstm["encoder_parameters"]
    rows.append(
        Row(
            "Lower memory (GRU-48 vs LSTM-256)",
            "fewer parameters and lower peak RSS",
            f"{p_gru.get('total', 0):,} vs {p_lstm.get('total', 0):,} params; "
            f"{fmt(gru['peak_rss_mb'])} vs {fmt(lstm['peak_rss_mb'])} MB",
            p_gru.get("total", 0) < p_lstm.get("total", 0) and gru["peak_rss_mb"] <= lstm["peak_rss_mb"],
        )
    )
    if p_gru.get("rnn") and p_lstm.get("rnn"):
        ratio_rnn, ratio_total = p_lstm["rnn"] / p_gru["rnn"], p_lstm["total"] / p_gru["total"]
        rows.append(
            Row(
                "'5.3x fewer parameters' (GRU-48 vs LSTM-256)",
                "5.3x",
                f"RNN {ratio_rnn:.1f}x, encoder {ratio_total:.2f}x",
                abs(ratio_rnn - 5.3) / 5.3 < 0.1,
                detail="ratio of recurrent-layer and whole-encoder parameters",
            )
        )
    return rows

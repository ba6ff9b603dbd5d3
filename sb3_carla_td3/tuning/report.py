"""The study report: best trials, parameter importances, pruned and failed trials, plots and the best config."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sb3_carla_td3.config import config_from_dict
from sb3_carla_td3.errors import ConfigError
from sb3_carla_td3.tuning.search import STUDY_FILE
from sb3_carla_td3.tuning.storage import _mask, make_storage, storage_url

#: The report, and the best trial's effective config, written into the study folder.
REPORT_FILE = "report.md"
BEST_CONFIG_FILE = "best_config.yaml"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _plot(name: str, out_dir: Path, draw: Callable[[], Any]) -> Path | None:
    """Save one Optuna matplotlib plot as PNG; None when Optuna cannot draw it (too few trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            axes = draw()
    except (ValueError, RuntimeError, ZeroDivisionError):
        plt.close("all")
        return None
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(10, 6)
    figure.tight_layout()
    path = out_dir / f"{name}.png"
    figure.savefig(path, dpi=90)
    plt.close("all")
    return path


def tune_report(study_dir: str | Path, storage: str | None = None, study_name: str | None = None, top: int = 10) -> Path:
    """Write a study's report: best trials, importances, pruned and failed trials, plots, and the best config.

    :param study_dir: the study folder (its study.json names the storage and the study); the report goes there
    :param storage: storage URL (None: from study.json; needed where it holds a masked password)
    :param study_name: study name (None: from study.json)
    :param top: rows of the best-trials table
    :return: the report.md path
    :raises ConfigError: when the study cannot be found
    """
    import optuna
    from optuna.trial import TrialState

    study_dir = Path(study_dir)
    info_path = study_dir / STUDY_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    storage = storage or info.get("storage") or (storage_url(None, study_dir) if (study_dir / "study.db").is_file() else None)
    study_name = study_name or info.get("study_name")
    if not storage or not study_name:
        raise ConfigError(f"{study_dir} has no {STUDY_FILE}: pass --storage URL and --study-name NAME")
    if ":***@" in storage:
        raise ConfigError(f"{info_path} holds the storage URL without its password: pass --storage URL")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=study_name, storage=make_storage(storage))
    except KeyError as error:
        raise ConfigError(f"no study {study_name!r} in {_mask(storage)}") from error
    study_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    states = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: -float(t.value or 0))
    names = sorted({name for t in trials for name in t.params})
    sections: list[tuple[str, str]] = []
    counts = ", ".join(f"{k} {v}" for k, v in states.items() if v)
    sections.append(("Study", f"- name: {study_name}\n- storage: {_mask(storage)}\n- trials: {counts or 'none'}"))

    def seconds(trial: optuna.trial.FrozenTrial) -> str:
        return f"{trial.duration.total_seconds():.0f}" if trial.duration else "-"

    rows = [[t.number, t.value, *(t.params.get(n, "-") for n in names), seconds(t)] for t in complete[:top]]
    best = _table(["trial", "eval return", *names, "seconds"], rows) if rows else "No trial completed yet."
    sections.append((f"Best trials (top {top}, mean deterministic evaluation return)", best))

    importances = "Needs at least two completed trials."
    if len(complete) >= 2 and names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = optuna.importance.get_param_importances(study)
            importances = _table(["parameter", "importance (fANOVA)"], [[k, v] for k, v in scores.items()])
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            importances = f"Not computable: {error}"
    sections.append(("Parameter importance", importances))

    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    pruned_rows = [
        [
            t.number,
            t.user_attrs.get("prune_kind", "-"),
            t.user_attrs.get("prune_timestep", "-"),
            t.user_attrs.get("prune_reason", "-"),
        ]
        for t in pruned
    ]
    sections.append(
        ("Pruned trials", _table(["trial", "pruned by", "timestep", "reason"], pruned_rows) if pruned else "None.")
    )
    failed = [t for t in trials if t.state == TrialState.FAIL]
    retried = {t.user_attrs.get("retry_of"): t.number for t in trials if "retry_of" in t.user_attrs}
    failed_rows = [
        [
            t.number,
            "surplus (race between workers, not run)"
            if t.user_attrs.get("surplus")
            else t.user_attrs.get("fail_reason") or t.user_attrs.get("error") or t.system_attrs.get("fail_reason", "-"),
            retried.get(t.number, "-"),
        ]
        for t in failed
    ]
    sections.append(("Failed trials", _table(["trial", "reason", "retried as"], failed_rows) if failed else "None."))

    from optuna.visualization import matplotlib as optuna_plots

    plots = [
        _plot("optimization_history", study_dir, lambda: optuna_plots.plot_optimization_history(study)),
        _plot("parallel_coordinate", study_dir, lambda: optuna_plots.plot_parallel_coordinate(study)),
        _plot("param_importances", study_dir, lambda: optuna_plots.plot_param_importances(study))
        if len(complete) >= 2 and names
        else None,
    ]
    drawn = [p for p in plots if p is not None]
    sections.append(("Plots", "\n".join(f"![{p.stem}]({p.name})" for p in drawn) or "Too few trials to draw."))

    if complete:
        trial = complete[0]
        data = dict(trial.user_attrs["config"])
        base = study.user_attrs.get("base_config", {})
        data["run"] = {**data["run"], "progress_bar": base.get("run", {}).get("progress_bar", True)}
        config = config_from_dict(data, source=f"study {study_name} trial {trial.number}")
        path = config.save(study_dir / BEST_CONFIG_FILE)
        header = (
            f"# Best trial {trial.number} of study {study_name}: eval return {trial.value:.4g}\n# params: {trial.params}\n"
        )
        path.write_text(header + path.read_text())
        run = trial.user_attrs.get("run_dir", "-")
        sections.append(("Best config", f"[{BEST_CONFIG_FILE}]({BEST_CONFIG_FILE}) (trial {trial.number}, run directory "
                                        f"{run}); train it with `sb3-carla-td3 train --config {path}`"))  # fmt: skip
    text = [f"# Tuning study {study_name}", ""]
    for heading, body in sections:
        text += [f"## {heading}", "", body, ""]
    report = study_dir / REPORT_FILE
    report.write_text("\n".join(text))
    return report

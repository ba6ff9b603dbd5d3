"""PNG plots of a run's history: gradient norms with their limits, Q-values with their bound, episode length/return."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _series(records: list[dict[str, float]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["timestep"], r[key]) for r in records if key in r]
    return [p[0] for p in points], [p[1] for p in points]


def _rolling(values: list[float], window: int) -> list[float]:
    return [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))
    ]


def plot_history(
    history: dict[str, list[dict[str, float]]],
    out_dir: str | Path,
    limits: dict[str, float | None] | None = None,
    q_bound: float | None = None,
    title: str = "",
) -> list[Path]:
    """Write gradient_norms.png, q_values.png, episode_length.png and episode_return.png.

    :param history: ``{"updates": [...], "episodes": [...]}`` from :class:`MetricsRecorder`
    :param out_dir: where the PNGs go
    :param limits: clip limits, ``{"actor": 1.0, "critic": 10.0}``, drawn as dashed lines
    :param q_bound: the Q divergence bound, drawn as a dashed line
    :param title: prefix of each figure title
    :return: the files written
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    limits = limits or {}
    updates, episodes = history.get("updates", []), history.get("episodes", [])
    written: list[Path] = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, side in zip(axes, ("actor", "critic"), strict=True):
        for key, style in ((f"{side}_grad_norm_pre", "-"), (f"{side}_grad_norm_post_max", "-")):
            x, y = _series(updates, key)
            if x:
                ax.plot(x, y, style, lw=1, label=key.replace(f"{side}_grad_norm_", "").replace("post_max", "post-clip (max)"))
        if limits.get(side) is not None:
            ax.axhline(limits[side], color="red", ls="--", lw=1, label=f"limit {limits[side]:g}")
        ax.set(title=f"{title} {side} gradient global L2 norm".strip(), xlabel="timestep", yscale="log")
        ax.legend(fontsize=8)
    written.append(_save(fig, out_dir / "gradient_norms.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("q_max", "q1_mean", "target_q_mean", "actor_q_mean"):
        x, y = _series(updates, key)
        if x:
            ax.plot(x, y, lw=1, label=key)
    if q_bound is not None:
        ax.axhline(q_bound, color="red", ls="--", lw=1, label=f"bound {q_bound:.3g}")
        ax.axhline(-q_bound, color="red", ls="--", lw=1)
    ax.set(title=f"{title} Q-values".strip(), xlabel="timestep")
    ax.legend(fontsize=8)
    written.append(_save(fig, out_dir / "q_values.png"))

    for key, name in (("length", "episode_length.png"), ("return", "episode_return.png")):
        fig, ax = plt.subplots(figsize=(7, 4))
        x, y = _series(episodes, key)
        if x:
            ax.plot(x, y, ".", ms=3, alpha=0.5, label=f"episode {key}")
            ax.plot(x, _rolling(y, 10), lw=1.5, label="rolling mean (10)")
            ax.legend(fontsize=8)
        ax.set(title=f"{title} episode {key}".strip(), xlabel="timestep")
        written.append(_save(fig, out_dir / name))
    return written


def plot_evaluations(evaluations: list[dict[str, Any]], out_dir: str | Path, title: str = "") -> Path:
    """Write eval_return.png: mean evaluation return (band: +- std over episodes) against physics frames.

    :param evaluations: :attr:`DrivingEvalCallback.results`
    :param out_dir: where the PNG goes
    :param title: prefix of the figure title
    :return: the file written
    """
    frames = [e["physics_frames"] for e in evaluations]
    mean = [e["mean_return"] for e in evaluations]
    std = [e["std_return"] for e in evaluations]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(frames, mean, "o-", lw=1.5, ms=3, label="mean evaluation return")
    ax.fill_between(
        frames,
        [m - s for m, s in zip(mean, std, strict=True)],
        [m + s for m, s in zip(mean, std, strict=True)],
        alpha=0.2,
        label="+- std over episodes",
    )
    ax.set(title=f"{title} evaluation return".strip(), xlabel="physics frames", ylabel="return")
    ax.legend(fontsize=8)
    return _save(fig, Path(out_dir) / "eval_return.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

"""A callback that keeps what reports and plots are made from: per-train-call statistics and per-episode results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback


class MetricsRecorder(BaseCallback):
    """Record ``model.last_train_stats`` after every ``train()`` call and every finished episode (Monitor infos).

    Works with any SB3 algorithm; without ``last_train_stats`` only episodes are recorded.

    :param history: earlier records to continue (when resuming a run)
    :param verbose: 0 silent
    """

    def __init__(self, history: dict[str, list[dict[str, Any]]] | None = None, verbose: int = 0) -> None:
        super().__init__(verbose=verbose)
        history = history or {}
        self.updates: list[dict[str, float]] = list(history.get("updates", []))
        self.episodes: list[dict[str, Any]] = list(history.get("episodes", []))
        self._last_n_updates = self.updates[-1].get("n_updates") if self.updates else None

    def _on_step(self) -> bool:
        stats: dict[str, float] = getattr(self.model, "last_train_stats", {})
        if stats and stats.get("n_updates") != self._last_n_updates:
            self._last_n_updates = stats.get("n_updates")
            self.updates.append({"timestep": float(self.num_timesteps), **stats})
        for info in self.locals.get("infos", []):
            episode = info.get("episode")
            if episode is not None:
                record = {"timestep": float(self.num_timesteps), "return": float(episode["r"]), "length": float(episode["l"])}
                if isinstance(info.get("reason"), str):  # the library's envs say why an episode ended
                    record["reason"] = info["reason"]
                self.episodes.append(record)
        return True

    def history(self) -> dict[str, Any]:
        """The records as JSON-ready data: ``{"updates": [...], "episodes": [...]}``."""
        return {"updates": self.updates, "episodes": self.episodes}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`history` as JSON (written to a temporary file, then renamed).

        :param path: destination file
        :return: the path written
        """
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.history()))
        tmp.replace(path)
        return path


def load_history(path: str | Path) -> dict[str, list[dict[str, float]]]:
    """Read a history written by :meth:`MetricsRecorder.save` (empty when the file does not exist).

    :param path: the JSON file
    :return: ``{"updates": [...], "episodes": [...]}``
    """
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else {"updates": [], "episodes": []}

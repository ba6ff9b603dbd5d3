"""A callback that keeps what reports and plots are made from: per-train-call statistics and per-episode results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback

from sb3_carla_td3.train_stats import latest_train_stats


class MetricsRecorder(BaseCallback):
    """Record the algorithm's :class:`~sb3_carla_td3.train_stats.TrainStats` after every ``train()`` call (its
    measured fields, :meth:`~sb3_carla_td3.train_stats.TrainStats.record`) and every finished episode (Monitor infos).

    Works with any SB3 algorithm; one that does not measure itself (not TD3CNN) has only its episodes recorded.

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
        stats = latest_train_stats(self.model)
        if stats is not None and stats.n_updates != self._last_n_updates:
            self._last_n_updates = stats.n_updates
            self.updates.append({"timestep": float(self.num_timesteps), **stats.record()})
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

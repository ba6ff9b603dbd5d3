"""Where a health check gets its numbers, and the one unit its patience is counted in: env steps.

Every check reads a :class:`~sb3_carla_td3.train_stats.TrainStats`. An algorithm that measures itself (TD3CNN) is
read after each new update, which is free; any other SB3 algorithm (SAC, TD3, DDPG, TQC) is scored on a replay
sample every ``check_freq`` env steps (:func:`~sb3_carla_td3.q_scoring.score_replay`, RNG-preserving).
:func:`~sb3_carla_td3.train_stats.measures_itself` decides which. Patience, warm-ups and growth windows are counted
in env steps (``model.num_timesteps``, every env of a VecEnv counted), so a misbehaviour is flagged within the same
window of env steps whatever the algorithm, up to one ``check_freq`` on a replay-scored one.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from sb3_carla_td3.q_scoring import score_replay
from sb3_carla_td3.train_stats import TrainStats, latest_train_stats, measures_itself

#: The latest replay score per model: checks that are due at the same step share one sample (the RNG is restored
#: after each score, so a second score would draw the very same batch).
_SCORES: weakref.WeakKeyDictionary[Any, tuple[tuple[int, int, int], TrainStats | None]] = weakref.WeakKeyDictionary()


def _replay_stats(model: Any, n_samples: int, min_size: int) -> TrainStats | None:
    buffer = getattr(model, "replay_buffer", None)
    if buffer is None or buffer.size() < min_size:
        return None
    key = (int(model.num_timesteps), int(getattr(model, "_n_updates", 0)), n_samples)
    cached = _SCORES.get(model)
    if cached is None or cached[0] != key:
        cached = (key, score_replay(model, n_samples, min_size=1))
        _SCORES[model] = cached
    return cached[1]


class StatsFeed:
    """New :class:`TrainStats` for one check: the algorithm's own after each new update, else a replay score.

    :param check_freq: env steps between replay scores, >= 1 (algorithms that do not measure themselves)
    :param n_samples: replay transitions per score, >= 1
    :param counter: which count must have moved since the last read for the algorithm's own record to be new
        (``n_updates`` for critic checks, ``n_actor_updates`` for actor checks: with ``policy_delay`` 2, every other)
    :param min_size: transitions the replay buffer must hold before a score (2 for a spread)
    """

    def __init__(
        self, check_freq: int, n_samples: int, counter: Callable[[TrainStats], int | None], min_size: int = 1
    ) -> None:
        self.check_freq, self.n_samples, self.counter, self.min_size = check_freq, n_samples, counter, min_size
        self._last_count: int | None = None
        self._last_step: int | None = None

    def restart(self) -> None:
        """Forget the last read's step (``learn(reset_num_timesteps=True)`` restarts the count)."""
        self._last_step = None

    def read(self, model: Any, num_timesteps: int, force: bool = False) -> TrainStats | None:
        """The statistics measured since the last read, or None when nothing new is due.

        :param model: the algorithm being trained
        :param num_timesteps: env steps so far
        :param force: score now even when ``check_freq`` has not passed (the end of training)
        :return: the record, or None
        """
        if measures_itself(model):
            stats = latest_train_stats(model)
            count = None if stats is None else self.counter(stats)
            if stats is None or count is None or count == self._last_count:
                return None
            self._last_count = count
            return stats
        n_updates = int(getattr(model, "_n_updates", 0))
        if n_updates == 0 or n_updates == self._last_count:
            return None  # nothing trained yet, or nothing new since the last score
        if not force and self._last_step is not None and num_timesteps - self._last_step < self.check_freq:
            return None
        stats = _replay_stats(model, self.n_samples, self.min_size)
        if stats is not None:
            self._last_count, self._last_step = n_updates, num_timesteps
        return stats


class Persistence:
    """How long a condition has held, in env steps, and whether that reaches the patience.

    The span runs from the last check at which the condition did not hold (or from ``start`` when it has held at every
    check so far) to the current check: the longest it may have lasted. A check every 2 env steps (TD3CNN's actor
    updates at ``policy_delay`` 2) with ``patience_steps=100`` raises the alarm at the 50th consecutive failing check;
    a check every ``check_freq`` env steps raises it ``patience_steps`` to ``patience_steps + check_freq`` env steps
    after the onset.

    :param patience_steps: env steps the condition must hold, >= 0 (0: the first failing check)
    """

    def __init__(self, patience_steps: int) -> None:
        self.patience_steps = patience_steps
        self.start: int = 0
        self.since: int | None = None
        self.failing_checks = 0

    def update(self, failing: bool, step: int) -> bool:
        """Add one check.

        :param failing: whether the condition holds at this check
        :param step: env steps so far
        :return: whether it has held for ``patience_steps``
        """
        if not failing:
            self.start, self.since, self.failing_checks = step, None, 0
            return False
        self.since = self.start if self.since is None else self.since
        self.failing_checks += 1
        return self.held(step) >= self.patience_steps

    def held(self, step: int) -> int:
        """:return: env steps the condition has held at ``step`` (0 while it does not)"""
        return 0 if self.since is None else step - self.since

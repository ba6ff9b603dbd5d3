"""The base of the checks that judge the actor's deterministic actions (saturation, a blind actor)."""

from __future__ import annotations

from operator import attrgetter

from stable_baselines3.common.callbacks import BaseCallback

from sb3_carla_td3.callbacks.measurement import Persistence, StatsFeed
from sb3_carla_td3.callbacks.utils import is_count, require
from sb3_carla_td3.train_stats import TrainStats


def _is_steps(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ActorCheckCallback(BaseCallback):
    """Judge one statistic of the actor's actions; alarm when it stays bad for ``patience_steps`` env steps.

    Measurements come from a :class:`~sb3_carla_td3.callbacks.measurement.StatsFeed`: TD3CNN's own record after each
    new actor update, or a replay score every ``check_freq`` env steps for any other algorithm with an actor.
    Checks start ``warmup_steps`` env steps after ``learning_starts``; without an actor the check is N/A and
    :attr:`not_applicable` says why.

    :param patience_steps: env steps the statistic must stay bad before the alarm, >= 0
    :param warmup_steps: env steps after ``learning_starts`` before the first check, >= 0
    :param check_freq: env steps between replay scores (algorithms that do not measure themselves), >= 1
    :param n_samples: replay observations scored per replay check
    :param min_size: transitions the replay buffer must hold before a replay check
    :param verbose: verbosity level
    """

    def __init__(
        self, patience_steps: int, warmup_steps: int, check_freq: int, n_samples: int, min_size: int = 1, verbose: int = 0
    ) -> None:
        super().__init__(verbose=verbose)
        for name, value in (("patience_steps", patience_steps), ("warmup_steps", warmup_steps)):
            require(_is_steps(value), name, value, "an int >= 0 (env steps)")
        require(is_count(check_freq), "check_freq", check_freq, "an int >= 1")
        self.patience_steps, self.warmup_steps = patience_steps, warmup_steps
        self.check_freq, self.n_samples = check_freq, n_samples
        self.not_applicable: str | None = None
        self.persistence = Persistence(patience_steps)
        self._feed = StatsFeed(check_freq, n_samples, counter=attrgetter("n_actor_updates"), min_size=min_size)

    def _on_training_start(self) -> None:
        self._feed.restart()
        if self.persistence.since is None:
            self.persistence.start = max(self.persistence.start, self._first_step())

    def _first_step(self) -> int:
        """:return: the env step from which the actor is judged (``learning_starts + warmup_steps``)"""
        return int(getattr(self.model, "learning_starts", 0)) + self.warmup_steps

    def _applicable(self) -> bool:
        """:return: whether the model has an actor and a replay buffer (else :attr:`not_applicable` says so)"""
        if getattr(self.model, "actor", None) is None or getattr(self.model, "replay_buffer", None) is None:
            self.not_applicable = f"{type(self.model).__name__} has no actor and replay buffer to score"
            return False
        return True

    def _measure(self) -> TrainStats | None:
        """:return: a new record once the warm-up is over, else None (also None without an actor: N/A)"""
        if not self._applicable() or self.num_timesteps < self._first_step():
            return None
        return self._feed.read(self.model, self.num_timesteps)

    def _persists(self, failing: bool) -> bool:
        """Add one check; :return: whether the statistic has been bad for ``patience_steps`` env steps"""
        return self.persistence.update(failing, self.num_timesteps)

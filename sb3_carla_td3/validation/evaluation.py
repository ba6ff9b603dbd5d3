"""Deterministic evaluation on fresh seeded tracks, against physics frames: ``eval/mean_return``, ``eval/std_return``.

Training episodes end early (off the track, stuck) and may add penalties; an evaluation episode of the CarRacing env
is CarRacing-v3's own: 1,000 physics frames, its own reward, no early ending other than CarRacing's (lap complete,
out of the playfield), so that the numbers compare with published CarRacing results.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.td3.policies import TD3Policy

from sb3_carla_td3.envs.carracing import CarRacingConfig
from sb3_carla_td3.policies import acting_with_target_actor
from sb3_carla_td3.validation.leaderboard import DrivingEpisode, LeaderboardTracker, aggregate_scores, tensorboard_values

__all__ = [
    "BEST_MODEL_FILE",
    "CARRACING_EPISODE_FRAMES",
    "EVAL_SEED_OFFSET",
    "HELD_OUT_EVAL_SEED",
    "DrivingEvalCallback",
    "evaluation_options",
    "frames_per_step",
    "read_evaluations",
    "run_episodes",
]

#: Physics frames of one CarRacing-v3 episode (its TimeLimit).
CARRACING_EPISODE_FRAMES = 1000
#: Evaluation tracks are seeded from here on (training seeds its env with run.seed, a small number).
EVAL_SEED_OFFSET = 1_000_000
#: ``sb3-carla-td3 evaluate`` drives tracks from here on by default: none of them was a run's evaluation track, so a
#: kept policy (picked on the run's evaluations) is measured on tracks it was not picked on.
HELD_OUT_EVAL_SEED = 2_000_000
#: The best evaluation's model, in the run directory (SB3's ``EvalCallback`` name).
BEST_MODEL_FILE = "best_model.zip"


def evaluation_options(options: Any) -> Any:
    """The env options of an evaluation episode: CarRacing-v3's own episode for CarRacing, unchanged otherwise.

    :param options: the training env's options dataclass
    :return: options with no off-track or stuck ending, no penalties and 1,000 physics frames (CarRacing)
    """
    if not isinstance(options, CarRacingConfig):
        return options
    steps = math.ceil(CARRACING_EPISODE_FRAMES / options.action_repeat)
    return dataclasses.replace(options, offtrack_steps=0, stuck_steps=0, stuck_penalty=0.0, max_episode_steps=steps)


def read_evaluations(path: Path) -> list[dict[str, Any]]:
    """:return: the evaluations stored in a :class:`DrivingEvalCallback` JSON file, oldest first; [] when none"""
    return json.loads(path.read_text())["evaluations"] if path.exists() else []


def frames_per_step(options: Any) -> int:
    """:return: physics frames per env step (``action_repeat`` where the env has one, else 1)"""
    return int(getattr(options, "action_repeat", 1))


def run_episodes(
    predict: Callable[[Any], Any], env: gym.Env, n_episodes: int, seed: int
) -> tuple[list[float], list[int], list[DrivingEpisode]]:
    """Run ``n_episodes`` episodes, episode ``i`` reset with seed ``seed + i``.

    :param predict: observation -> action (e.g. ``lambda obs: model.predict(obs, deterministic=True)[0]``)
    :param env: one gymnasium env
    :param n_episodes: episodes to run, >= 1
    :param seed: seed of the first episode
    :return: returns, lengths, and the leaderboard record of each episode (CARLA; [] for an env that reports no
        route, such as CarRacing)
    """
    returns, lengths, driving = [], [], []
    tracker = LeaderboardTracker()
    for episode in range(n_episodes):
        observation, info = env.reset(seed=seed + episode)
        tracker.start(info)
        total, steps, done = 0.0, 0, False
        while not done:
            observation, reward, terminated, truncated, info = env.step(predict(observation))
            tracker.update(info)
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
        record = tracker.finish()
        if record is not None:
            driving.append(record)
    return returns, lengths, driving if len(driving) == n_episodes else []


class DrivingEvalCallback(BaseCallback):
    """Every ``eval_freq`` env steps, run ``n_episodes`` deterministic episodes on the same fresh seeded tracks.

    Logs ``eval/mean_return``, ``eval/std_return``, ``eval/mean_length`` and ``eval/physics_frames``, and for a CARLA
    env ``eval/route_completion``, ``eval/infraction_penalty``, ``eval/driving_score`` and
    ``eval/infractions_per_km/<kind>`` (the CARLA Leaderboard's metrics); keeps every
    evaluation in :attr:`results` and, with ``log_path``, in a JSON file that a resumed run extends. With
    ``best_model_save_path`` it saves the model whenever its mean return beats every earlier evaluation of the run
    (SB3's ``EvalCallback`` convention: ``<path>/best_model.zip``; logged as ``eval/best_mean_return``): the policy a
    user keeps need not be the last one, whose evaluations swing by hundreds of points between checkpoints.

    :param make_env: builds the evaluation env (one gymnasium env; built on first use and kept, unless
        ``close_after_evaluation``)
    :param eval_freq: env steps between evaluations (callback calls, one per env step with one env)
    :param n_episodes: episodes per evaluation; episode ``i`` is seeded ``seed + i`` every time
    :param seed: seed of the first evaluation track
    :param frames_per_step: physics frames per env step, for the x axis of the learning curve
    :param log_path: JSON file of all evaluations (None: kept in memory only)
    :param best_model_save_path: folder of ``best_model.zip`` (None: not saved)
    :param polyak_actor: also drive the same tracks with the Polyak-averaged actor (TD3's ``actor_target``, see
        :func:`~sb3_carla_td3.policies.acting_with_target_actor`), stored as ``polyak_returns`` and
        ``polyak_mean_return`` and logged as ``eval/polyak_mean_return``: twice the evaluation time, to measure whether
        acting with the average holds a learned policy better than the last update does
    :param close_after_evaluation: close the evaluation env after each evaluation and build it anew for the next.
        Needed for a CARLA env on the training env's server: kept open, its last episode's ego and NPCs would stay in
        the world the training env drives in.
    :param verbose: 1 prints each evaluation
    """

    def __init__(
        self,
        make_env: Callable[[], gym.Env],
        eval_freq: int,
        n_episodes: int = 10,
        seed: int = EVAL_SEED_OFFSET,
        frames_per_step: int = 1,
        log_path: str | Path | None = None,
        best_model_save_path: str | Path | None = None,
        polyak_actor: bool = False,
        close_after_evaluation: bool = False,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if eval_freq < 1 or n_episodes < 1:
            raise ValueError(f"eval_freq and n_episodes must be >= 1, got {eval_freq} and {n_episodes}")
        self.make_env, self.eval_freq, self.n_episodes = make_env, eval_freq, n_episodes
        self.seed, self.frames_per_step = seed, frames_per_step
        self.log_path = None if log_path is None else Path(log_path)
        self.results: list[dict[str, Any]] = [] if self.log_path is None else read_evaluations(self.log_path)
        self.best_model_path = None if best_model_save_path is None else Path(best_model_save_path) / BEST_MODEL_FILE
        #: the best mean return saved so far (a resumed run's earlier best counts once its file is there)
        self.best_mean_return = -np.inf
        if self.best_model_path is not None and self.best_model_path.is_file():
            self.best_mean_return = max((r["mean_return"] for r in self.results if r.get("best")), default=-np.inf)
        self.polyak_actor = polyak_actor
        self.close_after_evaluation = close_after_evaluation
        self._env: gym.Env | None = None

    def _init_callback(self) -> None:
        if self.polyak_actor and not hasattr(self.model.policy, "actor_target"):
            raise ValueError(
                f"polyak_actor=True needs a policy with an actor_target (TD3, DDPG, TD3CNN); "
                f"{type(self.model).__name__}'s {type(self.model.policy).__name__} has none"
            )

    def _on_step(self) -> bool:
        if self.num_timesteps % self.eval_freq == 0:
            self.evaluate()
        return True

    def evaluate(self) -> dict[str, Any]:
        """Run one evaluation now, log it and store it.

        :return: ``timestep``, ``physics_frames``, ``returns``, ``lengths``, ``mean_return``, ``std_return``, and for
            a CARLA env ``leaderboard`` (:func:`~sb3_carla_td3.validation.leaderboard.aggregate_scores`)
        """
        if self._env is None:
            self._env = self.make_env()

        def predict(observation: Any) -> Any:
            return self.model.predict(observation, deterministic=True)[0]

        polyak_returns: list[float] | None = None
        try:
            returns, lengths, driving = run_episodes(predict, self._env, self.n_episodes, self.seed)
            if self.polyak_actor:
                with acting_with_target_actor(cast(TD3Policy, self.model.policy)):
                    polyak_returns = run_episodes(predict, self._env, self.n_episodes, self.seed)[0]
        finally:
            if self.close_after_evaluation:
                self._env.close()
                self._env = None
        result: dict[str, Any] = {
            "timestep": self.num_timesteps,
            "physics_frames": self.num_timesteps * self.frames_per_step,
            "returns": returns,
            "lengths": lengths,
            "mean_return": float(np.mean(returns)),
            "std_return": float(np.std(returns)),
        }
        if polyak_returns is not None:
            result["polyak_returns"] = polyak_returns
            result["polyak_mean_return"] = float(np.mean(polyak_returns))
            self.logger.record("eval/polyak_mean_return", result["polyak_mean_return"])
        if driving:  # a CARLA env: the leaderboard's numbers (sb3_carla_td3.validation.leaderboard)
            result["leaderboard"] = aggregate_scores(driving)
            for key, value in tensorboard_values(result["leaderboard"]).items():
                self.logger.record(key, value)
        if self.best_model_path is not None and result["mean_return"] > self.best_mean_return:
            self.best_mean_return, result["best"] = result["mean_return"], True
            self.best_model_path.parent.mkdir(parents=True, exist_ok=True)
            self.model.save(self.best_model_path)
        self.results = [r for r in self.results if r["timestep"] < self.num_timesteps] + [result]
        for key in ("mean_return", "std_return", "physics_frames"):
            self.logger.record(f"eval/{key}", result[key])
        if self.best_model_path is not None:
            self.logger.record("eval/best_mean_return", self.best_mean_return)
        self.logger.record("eval/mean_length", float(np.mean(lengths)))
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self.log_path.write_text(json.dumps({"evaluations": self.results}, indent=1))
        if self.verbose >= 1:
            scores = f", driving score {result['leaderboard']['driving_score']:.1f}" if driving else ""
            polyak = f", Polyak actor {result['polyak_mean_return']:.1f}" if polyak_returns is not None else ""
            mean, std = result["mean_return"], result["std_return"]
            print(f"eval at {self.num_timesteps} steps: {mean:.1f} +- {std:.1f}{scores}{polyak}")
        return result

    def _on_training_end(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

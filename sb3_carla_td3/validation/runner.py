"""One training run from a RunConfig: env, TD3CNN, health callbacks, logs, checkpoints, evaluation, resume, Ctrl-C."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sb3_carla_td3.callbacks import (
    ActionSaturationCallback,
    ActorVariationCallback,
    DormantUnitCallback,
    EpisodeCollapseCallback,
    GradientNormCallback,
    QValueCallback,
    RewardTrendCallback,
    TrainingHealthCallback,
)
from sb3_carla_td3.config import RunConfig, load_config
from sb3_carla_td3.envs import CarlaConfig, make_env
from sb3_carla_td3.errors import ConfigError
from sb3_carla_td3.td3_cnn import TD3CNN
from sb3_carla_td3.train_stats import TrainStats, latest_train_stats
from sb3_carla_td3.validation.checkpoints import (
    AtomicCheckpointCallback,
    latest_checkpoint,
    load_health_state,
    save_checkpoint,
    terminate_as_interrupt,
)
from sb3_carla_td3.validation.evaluation import DrivingEvalCallback, evaluation_options, frames_per_step
from sb3_carla_td3.validation.recorder import MetricsRecorder, load_history

CONFIG_FILE = "config.yaml"
HISTORY_FILE = "history.json"
EVALUATIONS_FILE = "eval/evaluations.json"
CHECKPOINTS = "checkpoints"

#: Builds an extra callback of a run from the run's own health callback and its evaluation callback (None when
#: ``run.eval_freq`` is 0), so that it can read their verdicts and results; see :func:`train`.
CallbackFactory = Callable[[TrainingHealthCallback, DrivingEvalCallback | None], BaseCallback]


@dataclass
class RunResult:
    """What a training run produced.

    :param run_dir: the run directory
    :param config: the effective config
    :param model: the trained model
    :param health: the health callbacks, with their verdicts
    :param recorder: per-update and per-episode records
    :param status: "completed", "stopped" (a health check stopped training) or "interrupted" (Ctrl-C)
    :param seconds: wall-clock time of this invocation's ``learn()``
    :param resumed_from: timestep the run was resumed from (None: fresh run)
    """

    run_dir: Path
    config: RunConfig
    model: TD3CNN
    health: TrainingHealthCallback
    recorder: MetricsRecorder
    status: str
    seconds: float
    resumed_from: int | None = None


def make_vec_env(config: RunConfig, seed: int) -> VecEnv:
    """A one-env DummyVecEnv with a Monitor (episode returns and lengths), seeded.

    :param config: the run config (its ``env`` section)
    :param seed: env seed
    :return: the vectorised env
    """
    env = DummyVecEnv([lambda: Monitor(make_env(config.env.name, config.env.options))])
    env.seed(seed)
    return env


def health_callback(config: RunConfig, checkpoint_dir: Path | None = None) -> TrainingHealthCallback:
    """The health callbacks configured from the ``monitor`` and ``td3`` sections.

    :param config: the run config
    :param checkpoint_dir: where a stopping check saves the model first (None: no checkpoint)
    :return: the bundled callback
    """
    monitor = config.monitor
    stop_path = None if checkpoint_dir is None else checkpoint_dir / "stopped_by_health_check.zip"
    return TrainingHealthCallback(
        gradients=GradientNormCallback(
            actor_max_norm=config.td3.actor_grad_clip,
            critic_max_norm=config.td3.critic_grad_clip,
            stop_on_violation=monitor.stop_on_clip_violation,
            checkpoint_path=stop_path,
        ),
        q_values=QValueCallback(
            check_freq=monitor.q_check_freq,
            n_samples=monitor.q_samples,
            margin=monitor.q_bound_margin,
            atol=monitor.q_atol,
            growth_factor=monitor.q_growth_factor,
            stop_on_divergence=monitor.stop_on_divergence,
            checkpoint_path=stop_path,
        ),
        episodes=EpisodeCollapseCallback(
            fraction=monitor.collapse_fraction,
            window=monitor.collapse_window,
            baseline_episodes=monitor.baseline_episodes,
            baseline_length=monitor.baseline_length,
            patience=monitor.collapse_patience,
            stop_on_collapse=monitor.stop_on_collapse,
            checkpoint_path=stop_path,
        ),
        rewards=RewardTrendCallback(window=monitor.reward_window, tolerance=monitor.reward_tolerance),
        saturation=ActionSaturationCallback(
            max_fraction=monitor.saturation_max_fraction,
            patience_steps=monitor.saturation_patience_steps,
            check_freq=monitor.q_check_freq,
            stop_on_saturation=monitor.stop_on_saturation,
            checkpoint_path=stop_path,
        ),
        variation=ActorVariationCallback(
            min_std=monitor.variation_min_std,
            patience_steps=monitor.variation_patience_steps,
            warmup_steps=monitor.variation_warmup_steps,
            check_freq=monitor.q_check_freq,
            stop_on_blind=monitor.stop_on_blind,
            checkpoint_path=stop_path,
        ),
        dormant=DormantUnitCallback(
            check_freq=monitor.dormant_check_freq,
            tau=monitor.dormant_tau,
            max_first_conv=monitor.dormant_max_first_conv,
            patience_steps=monitor.dormant_patience_steps,
            stop_on_dead=monitor.stop_on_dead_encoder,
            checkpoint_path=stop_path,
        ),
    )


def evaluation_callback(config: RunConfig, run_dir: Path, verbose: int = 0) -> DrivingEvalCallback:
    """Deterministic evaluation every ``run.eval_freq`` steps on fresh seeded tracks (CarRacing-v3's own episodes).

    :param config: the run config
    :param run_dir: the run directory; evaluations go to ``eval/evaluations.json``, the best one's model to
        ``best_model.zip``
    :param verbose: 1 prints each evaluation
    :return: the callback
    """
    options = evaluation_options(config.env.options)
    if isinstance(options, CarlaConfig) and options.server_command is not None:
        options = dataclasses.replace(options, server_command=None)  # the training env started the server and restarts it
    return DrivingEvalCallback(
        lambda: make_env(config.env.name, options),
        eval_freq=config.run.eval_freq,
        n_episodes=config.run.eval_episodes,
        frames_per_step=frames_per_step(config.env.options),
        log_path=run_dir / EVALUATIONS_FILE,
        best_model_save_path=run_dir,
        polyak_actor=config.run.eval_polyak_actor,
        # CARLA: the evaluation env shares the training env's server; its actors must not stay in training's world
        close_after_evaluation=config.env.name == "carla",
        verbose=verbose,
    )


def build_model(config: RunConfig, env: VecEnv) -> TD3CNN:
    """TD3CNN as the config describes it ("MultiInputPolicy" for Dict observations, else "CnnPolicy").

    :param config: the run config
    :param env: the training env
    :return: the model
    """
    space, action_space = env.observation_space, env.action_space
    if not isinstance(action_space, spaces.Box):
        raise ConfigError(f"{config.source or 'config'}: TD3 needs a continuous (Box) action space, got {action_space}")
    kwargs = config.model_kwargs(n_actions=action_space.shape[0])
    if isinstance(space, spaces.Dict):
        policy = "MultiInputPolicy"
    elif is_image_space(space, check_channels=False, normalized_image=False):
        policy = "CnnPolicy"
    else:  # a vector observation: an MLP on it; the encoder section does not apply
        if config.encoder.mode == "shared":
            raise ConfigError(
                f"{config.source or 'config'}: encoder.mode='shared' needs an image observation, but the env observes "
                f"a vector {space}; use encoder.mode: separate"
            )
        policy = "MlpPolicy"
        kwargs["policy_kwargs"].pop("features_extractor_kwargs")
    if kwargs["device"] == "auto":
        kwargs["device"] = "cuda" if th.cuda.is_available() else "cpu"
    return TD3CNN(policy, env, **kwargs)


def train(
    config: RunConfig | None,
    run_dir: str | Path,
    resume: bool = False,
    callbacks: Sequence[BaseCallback] = (),
    verbose: int = 0,
    callback_factories: Sequence[CallbackFactory] = (),
) -> RunResult:
    """Train (or resume) a run in ``run_dir``: config.yaml, progress.csv, TensorBoard, history.json, checkpoints/.

    Ctrl-C (or SIGTERM) writes a checkpoint and returns with status "interrupted"; the report can then be written as
    usual.

    :param config: the run config (None when resuming: read from ``run_dir/config.yaml``)
    :param run_dir: the run directory (created)
    :param resume: continue from the newest checkpoint in ``run_dir/checkpoints`` (timesteps, updates, optimizer
        state, and the replay buffer when it was saved)
    :param callbacks: extra callbacks
    :param verbose: 1 prints the reports and the SB3 logs to stdout
    :param callback_factories: builders of extra callbacks that need the run's own health and evaluation callbacks
        (see :data:`CallbackFactory`); each is called once, and its callback runs after ``callbacks``
    :return: the result
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config is None:
        config = load_config(run_dir / CONFIG_FILE)
    config.save(run_dir / CONFIG_FILE)
    if config.run.threads is not None:
        th.set_num_threads(config.run.threads)
    checkpoint_dir = run_dir / CHECKPOINTS
    env = make_vec_env(config, config.run.seed)
    checkpoint = latest_checkpoint(checkpoint_dir) if resume else None
    if resume and checkpoint is None:
        raise FileNotFoundError(f"cannot resume {run_dir}: no checkpoint in {checkpoint_dir} (latest.json missing)")
    if checkpoint is not None:
        model = TD3CNN.load(checkpoint["model"], env=env, device=config.run.device)
        if checkpoint["replay_buffer"] is not None:
            model.load_replay_buffer(checkpoint["replay_buffer"])
        recorder = MetricsRecorder(load_history(run_dir / HISTORY_FILE))
    else:
        model = build_model(config, env)
        recorder = MetricsRecorder()
    formats = ["csv", "tensorboard"] + (["stdout"] if verbose else [])
    model.set_logger(configure(str(run_dir), formats))
    health = health_callback(config, checkpoint_dir)
    saved_health = load_health_state(checkpoint) if checkpoint is not None else None
    if saved_health is not None:  # the report judges the whole run: alarms raised before the resume stand
        health.load_state_dict(saved_health)
    evaluation = evaluation_callback(config, run_dir, verbose) if config.run.eval_freq else None
    extra = [*callbacks, *(factory(health, evaluation) for factory in callback_factories)]
    all_callbacks: list[BaseCallback] = [health, recorder, *extra]
    if config.run.checkpoint_freq:
        all_callbacks.append(
            AtomicCheckpointCallback(
                config.run.checkpoint_freq, checkpoint_dir, config.run.save_replay_buffer, health.state_dict
            )
        )
    if evaluation is not None:
        all_callbacks.append(evaluation)

    resumed_from = model.num_timesteps if checkpoint is not None else None
    remaining = max(config.run.total_timesteps - model.num_timesteps, 0)
    status, started = "completed", time.perf_counter()
    try:
        with terminate_as_interrupt():
            model.learn(
                remaining,
                callback=all_callbacks,
                log_interval=config.run.log_interval,
                reset_num_timesteps=checkpoint is None,
                progress_bar=config.run.progress_bar,
            )
        if model.num_timesteps < config.run.total_timesteps:
            status = "stopped"
    except KeyboardInterrupt:
        status = "interrupted"
        save_checkpoint(model, checkpoint_dir, config.run.save_replay_buffer, health.state_dict())
    finally:
        recorder.save(run_dir / HISTORY_FILE)
        model.logger.close()
    seconds = time.perf_counter() - started
    return RunResult(run_dir, config, model, health, recorder, status, seconds, resumed_from)


def summarize(result: RunResult, last_episodes: int = 10) -> dict[str, Any]:
    """Numbers for reports: final return, updates, speed, clip fractions, norms.

    :param result: a finished run
    :param last_episodes: episodes averaged for the final return
    :return: name -> value (None where nothing was measured)
    """
    episodes = result.recorder.episodes
    updates = [TrainStats.from_record(update) for update in result.recorder.updates]
    tail = [e["return"] for e in episodes[-last_episodes:]]

    def measured(field: Callable[[TrainStats], float | None]) -> list[float]:
        return [value for update in updates if (value := field(update)) is not None]

    def mean_of(field: Callable[[TrainStats], float | None]) -> float | None:
        values = measured(field)
        return sum(values) / len(values) if values else None

    def max_of(field: Callable[[TrainStats], float | None]) -> float | None:
        values = measured(field)
        return max(values) if values else None

    stats = latest_train_stats(result.model) or TrainStats()
    reasons = Counter(e["reason"] for e in episodes if "reason" in e)
    return {
        "episode_ends": dict(reasons.most_common()),
        "status": result.status,
        "timesteps": result.model.num_timesteps,
        "session_timesteps": result.model.num_timesteps - (result.resumed_from or 0),  # what `seconds` covers
        "updates": stats.n_updates,
        "episodes": len(episodes),
        "final_return": sum(tail) / len(tail) if tail else None,
        "seconds": result.seconds,
        "seconds_per_update": mean_of(lambda u: u.seconds_per_update),
        "actor_grad_norm_post_max": max_of(lambda u: u.actor_grad_norm_post_max),
        "critic_grad_norm_post_max": max_of(lambda u: u.critic_grad_norm_post_max),
        "actor_clip_fraction": mean_of(lambda u: u.actor_clip_fraction),
        "critic_clip_fraction": mean_of(lambda u: u.critic_clip_fraction),
        "critic_grad_norm_pre_mean": mean_of(lambda u: u.critic_grad_norm_pre),
        "q_max": max_of(lambda u: u.q_max),
        "nonfinite_skips": stats.nonfinite_skips or 0,
    }

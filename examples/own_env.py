"""The driving recipe on your own env: gymnasium's CarRacing-v3 built by hand, the recipe's env half as wrappers.

    python examples/own_env.py [--timesteps 50000] [--seed 0] [--out runs/own_env/td3_s0] [--eval-freq 5000]
                               [--eval-episodes 10] [--algo td3|sac] [--threads 1] [--augment auto|none|shift]
                               [--eval-polyak-actor]
    python examples/own_env.py --evaluate runs/own_env/td3_s0/best_model.zip [--eval-episodes 50] [--eval-seed 20000]

:func:`make_env` is the whole pipeline: ``gymnasium.make("CarRacing-v3")`` (96 px RGB, ``[steer, gas, brake]``,
CarRacing's own reward), then action repeat, grayscale, 40x40 px, a stack of 4 frames, the soft linear brake, and
for training the stuck and off-track endings (:mod:`sb3_carla_td3.envs.wrappers`). Training is
``TD3CNN("CnnPolicy", env, seed=seed)`` with every setting at its default (``--algo sac``: SB3's SAC with a
100,000-transition buffer). Every ``--eval-freq`` steps the deterministic policy drives ``--eval-episodes`` fresh
tracks (seeds 10,000 + k, the same at every evaluation) in CarRacing-v3's own episodes (1,000 physics frames, no
penalty, no early ending but CarRacing's), a line is printed, ``<out>/eval/evaluations.json`` rewritten (the best
evaluation's model saved as ``<out>/best_model.zip``), and a checkpoint (model and replay buffer) replaces the
previous one in ``<out>/checkpoints`` (the newest only: a replay buffer takes gigabytes). Run the same command
again to continue from the checkpoint up to ``--timesteps``; Ctrl-C or SIGTERM saves a checkpoint first.
``--evaluate MODEL`` only drives a saved model on ``--eval-episodes`` tracks from ``--eval-seed`` and prints its
mean return with a 95 % bootstrap interval: a best evaluation was picked out of several noisy ones, so check the kept
policy on tracks it was not picked on (seeds 20,000 + k) before trusting its number.
ResizeObservation needs OpenCV (``pip install opencv-python-headless``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import cast

import gymnasium as gym
import torch as th
from gymnasium.wrappers import FrameStackObservation, GrayscaleObservation, ResizeObservation
from stable_baselines3 import SAC
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.td3.policies import TD3Policy

from sb3_carla_td3 import TD3CNN
from sb3_carla_td3.envs.wrappers import (
    ActionRepeat,
    OffTrackTermination,
    PedalMapping,
    StuckTermination,
    carracing_off_track,
    carracing_speed,
)
from sb3_carla_td3.policies import acting_with_target_actor
from sb3_carla_td3.validation.checkpoints import learn_resumably
from sb3_carla_td3.validation.evaluation import DrivingEvalCallback, run_episodes
from sb3_carla_td3.validation.statistics import bootstrap_mean

#: Physics frames per env step (ActionRepeat); CarRacing-v3's 1,000-frame episode is 250 steps.
FRAMES_PER_STEP = 4
#: Evaluation episode k of every evaluation drives the track of seed EVAL_SEED + k.
EVAL_SEED = 10_000
ALGORITHMS: dict[str, type[OffPolicyAlgorithm]] = {"td3": TD3CNN, "sac": SAC}


def make_env(seed: int, train: bool) -> gym.Env:
    """gymnasium's CarRacing-v3 with the driving recipe's env half, as you would wrap an env of your own.

    Observations are ``(4, 40, 40)`` uint8: the last 4 grayscale frames, oldest first, channel-first as SB3's
    ``CnnPolicy`` reads them. Actions are ``[steer, throttle_brake]`` in [-1, 1], the brake at most 0.3 and 0 meaning
    gas 0.35 (``PedalMapping(mode="linear")``). Rewards are CarRacing's own, summed over the 4 physics frames.

    :param seed: seed of the action space's sampler (tracks are seeded at ``reset``: by SB3 from the model's seed
        in training, per episode in evaluation)
    :param train: add the training endings: 50 steps (4 s) slower than 1 m/s, or 10 steps (0.8 s) with no wheel on
        the road, end the episode with -100. Without them (evaluation) an episode is CarRacing-v3's own: 1,000
        physics frames (250 steps) unless the lap is complete or the car leaves the playfield.
    :return: the wrapped env
    """
    env = gym.make("CarRacing-v3")  # (96, 96, 3) uint8 frames, [steer, gas, brake], 1,000-frame TimeLimit
    env = ActionRepeat(env, repeat=FRAMES_PER_STEP)
    env = GrayscaleObservation(env)  # (96, 96): keep_dim=False drops the channel axis ...
    env = ResizeObservation(env, (40, 40))
    env = FrameStackObservation(env, stack_size=4)  # ... so the stack axis comes first: (4, 40, 40)
    env = PedalMapping(env, max_brake=0.3, mode="linear")
    if train:
        env = StuckTermination(env, speed=carracing_speed, stuck_steps=50, penalty=-100.0)
        env = OffTrackTermination(env, off_track=carracing_off_track, offtrack_steps=10, penalty=-100.0)
    env.action_space.seed(seed)
    return env


def evaluate_saved(path: Path, algo: str, episodes: int, seed: int, polyak_actor: bool = False) -> list[float]:
    """Drive a saved model on ``episodes`` evaluation tracks (seeds ``seed + k``) and print its mean return.

    :param path: a model zip (``best_model.zip``, a checkpoint)
    :param algo: the algorithm that saved it (``td3`` or ``sac``)
    :param episodes: tracks to drive
    :param seed: seed of the first track
    :param polyak_actor: drive with TD3's Polyak-averaged actor instead of the actor
    :return: the return of each episode
    """
    model = ALGORITHMS[algo].load(path, device="cpu")
    env = make_env(seed, train=False)
    with acting_with_target_actor(cast("TD3Policy", model.policy), enabled=polyak_actor):
        returns, _, _ = run_episodes(lambda obs: model.predict(obs, deterministic=True)[0], env, episodes, seed)
    env.close()
    actor = "Polyak-averaged actor" if polyak_actor else "actor"
    print(f"{path} ({actor}), {episodes} tracks from seed {seed}: mean return {bootstrap_mean(returns)} (95 % CI)")
    return returns


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=50_000, help="env steps in all (4 physics frames each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="run directory (default runs/own_env/<algo>_s<seed>)")
    parser.add_argument("--eval-freq", type=int, default=5_000, help="env steps between evaluations and checkpoints")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED, help="seed of the first evaluation track")
    parser.add_argument("--evaluate", type=Path, default=None, metavar="MODEL", help="only drive a saved model")
    parser.add_argument("--algo", choices=sorted(ALGORITHMS), default="td3")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (two 1-thread runs fit 2 cores)")
    parser.add_argument(
        "--augment", choices=["auto", "none", "shift"], default="auto",
        help="TD3CNN's augment; auto (its default): DrQ's random shift for this image-only env; none: no augmentation",
    )  # fmt: skip
    parser.add_argument(
        "--eval-polyak-actor", action="store_true",
        help="also drive each evaluation's tracks with the Polyak-averaged actor (TD3's actor_target; td3 only)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.eval_polyak_actor and args.algo != "td3":
        parser.error(f"--eval-polyak-actor needs --algo td3 (SB3's {args.algo.upper()} keeps no Polyak-averaged actor)")
    th.set_num_threads(args.threads)
    if args.evaluate is not None:
        evaluate_saved(args.evaluate, args.algo, args.eval_episodes, args.eval_seed, args.eval_polyak_actor)
        return 0
    run_dir = args.out if args.out is not None else Path("runs") / "own_env" / f"{args.algo}_s{args.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = make_env(args.seed, train=True)
    algorithm = ALGORITHMS[args.algo]

    def build() -> OffPolicyAlgorithm:
        if args.algo == "td3" and args.augment != "auto":
            augment = None if args.augment == "none" else args.augment
            return TD3CNN("CnnPolicy", env, seed=args.seed, augment=augment)  # one argument off the defaults
        if args.algo == "td3":
            return TD3CNN("CnnPolicy", env, seed=args.seed)  # every TD3CNN setting at its default
        return SAC("CnnPolicy", env, seed=args.seed, buffer_size=100_000)

    evaluation = DrivingEvalCallback(
        lambda: make_env(args.eval_seed, train=False),
        eval_freq=args.eval_freq,
        n_episodes=args.eval_episodes,
        seed=args.eval_seed,
        frames_per_step=FRAMES_PER_STEP,
        log_path=run_dir / "eval" / "evaluations.json",
        best_model_save_path=run_dir,
        polyak_actor=args.eval_polyak_actor,
        verbose=1,
    )
    started = time.perf_counter()
    model, status = learn_resumably(
        build, lambda path: algorithm.load(path, env=env), args.timesteps, run_dir / "checkpoints", args.eval_freq,
        [evaluation],
        run_dir / "report.json",
    )  # fmt: skip
    env.close()
    minutes = (time.perf_counter() - started) / 60
    print(f"{status} at {model.num_timesteps:,} steps ({minutes:.1f} min); evaluations in {evaluation.log_path}")
    for result in evaluation.results:
        print(f"  {result['physics_frames']:>8,} frames: {result['mean_return']:7.1f} +- {result['std_return']:.1f}")
    return 130 if status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())

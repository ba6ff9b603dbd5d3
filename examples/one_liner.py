"""Issue 20, bar 1: the design card's one-liner on the library's env, with no argument but the seed.

    python examples/one_liner.py [--seed 0] [--timesteps 30000] [--out runs/one_liner/s0] [--threads 1]

Trains ``TD3CNN("MultiInputPolicy", CarRacingEnv(<the camera + vector env>), seed=seed).learn(timesteps)``: every
TD3CNN setting is the constructor's default; only the env settings come from ``configs/carracing_camera_vector.yaml``
(40 px grayscale, 2 frames, the 7-float vector, soft brake, stuck and off-track endings). Evaluates the
deterministic policy every 5,000 steps on 10 fresh tracks in CarRacing-v3's own 1,000-frame episodes (as
docs/results.md does) into ``<out>/eval/evaluations.json`` (the best evaluation's model into
``<out>/best_model.zip``), checkpoints (model and replay buffer) at the same steps (the newest only), and resumes
from it when run again; Ctrl-C or SIGTERM saves a checkpoint first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch as th
import yaml

from sb3_carla_td3 import TD3CNN
from sb3_carla_td3.envs import CarRacingConfig, CarRacingEnv
from sb3_carla_td3.validation.checkpoints import learn_resumably
from sb3_carla_td3.validation.evaluation import DrivingEvalCallback, evaluation_options

CAMERA_VECTOR = Path(__file__).resolve().parent.parent / "configs" / "carracing_camera_vector.yaml"


def camera_vector_env_config() -> CarRacingConfig:
    """:return: the env settings of the camera + vector recipe (its YAML ``env:`` section, nothing else)"""
    options = dict(yaml.safe_load(CAMERA_VECTOR.read_text())["env"])
    options.pop("name")
    return CarRacingConfig.from_dict(options)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timesteps", type=int, default=30_000, help="env steps in all (4 physics frames each)")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default runs/one_liner/s<seed>)")
    parser.add_argument("--eval-freq", type=int, default=5_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (two 1-thread runs fit 2 cores)")
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)
    run_dir = args.out if args.out is not None else Path("runs") / "one_liner" / f"s{args.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = camera_vector_env_config()
    env = CarRacingEnv(config)
    evaluation = DrivingEvalCallback(
        lambda: CarRacingEnv(evaluation_options(config)),
        eval_freq=args.eval_freq,
        n_episodes=args.eval_episodes,
        frames_per_step=config.action_repeat,
        log_path=run_dir / "eval" / "evaluations.json",
        best_model_save_path=run_dir,
        verbose=1,
    )
    started = time.perf_counter()
    model, status = learn_resumably(
        lambda: TD3CNN("MultiInputPolicy", env, seed=args.seed),  # the one-liner: nothing else
        lambda path: TD3CNN.load(path, env=env),
        args.timesteps,
        run_dir / "checkpoints",
        args.eval_freq,
        [evaluation],
        run_dir / "report.json",
    )
    minutes = (time.perf_counter() - started) / 60
    print(f"{status} at {model.num_timesteps:,} steps ({minutes:.1f} min); evaluations in {evaluation.log_path}")
    for result in evaluation.results:
        print(f"  {result['physics_frames']:>7,} frames: {result['mean_return']:7.1f} +- {result['std_return']:.1f}")
    return 130 if status == "interrupted" else 0


if __name__ == "__main__":
    sys.exit(main())

"""Add the training-health callbacks to an existing Stable-Baselines3 pipeline without changing anything else.

Trains plain ``stable_baselines3.TD3`` and ``SAC`` on a gymnasium env with their default hyperparameters, passes a
:class:`~sb3_carla_td3.callbacks.TrainingHealthCallback` to ``learn()``, and prints each run's verdicts::

    python examples/monitor_existing_pipeline.py --timesteps 2000
    python examples/monitor_existing_pipeline.py --env MountainCarContinuous-v0 --algos sac --tensorboard runs/health

The ``health/*`` keys go wherever the SB3 logger writes (stdout with ``--verbose 1``, TensorBoard with
``--tensorboard``). The exit code is 1 when any criterion failed, so the script can gate a CI job.
"""

from __future__ import annotations

import argparse

from stable_baselines3 import SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_carla_td3.callbacks import TrainingHealthCallback

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"td3": TD3, "sac": SAC}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line.

    :param argv: arguments without the program name; None reads ``sys.argv``
    :return: the parsed options
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1", help="gymnasium id of an env with a Box action space")
    parser.add_argument("--timesteps", type=int, default=500, help="env steps per algorithm (default: %(default)s)")
    parser.add_argument("--algos", nargs="+", choices=sorted(ALGORITHMS), default=["td3", "sac"], help="algorithms to run")
    parser.add_argument("--seed", type=int, default=0, help="random seed of each run")
    parser.add_argument("--tensorboard", default=None, help="TensorBoard log folder (default: none)")
    parser.add_argument("--verbose", type=int, default=0, help="SB3 verbosity (1 prints the logger tables)")
    args = parser.parse_args(argv)
    if args.timesteps < 1:
        parser.error(f"--timesteps must be an int >= 1, got {args.timesteps}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Train each requested algorithm with the health callback and print the verdicts.

    :param argv: command-line arguments without the program name; None reads ``sys.argv``
    :return: 0 when no criterion failed, 1 otherwise
    """
    args = parse_args(argv)
    failed = []
    for name in args.algos:
        # The existing pipeline, unchanged ...
        model = ALGORITHMS[name]("MlpPolicy", args.env, seed=args.seed, verbose=args.verbose, tensorboard_log=args.tensorboard)
        # ... plus one callback.
        health = TrainingHealthCallback()
        model.learn(total_timesteps=args.timesteps, callback=health)
        print(f"== {name.upper()} on {args.env}, {model.num_timesteps} steps ==")
        print(health.summary())
        failed += [f"{name}:{criterion}" for criterion, verdict in health.verdict().items() if verdict.passed is False]
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

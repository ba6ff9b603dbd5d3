"""Watch a TD3 actor saturate: pre-tanh outputs and gradient norms over the first updates, per encoder mode.

    python examples/actor_saturation_probe.py [--encoder separate|shared] [--updates 100] [--every 20]

Builds TD3CNN from configs/phase1_validation.yaml on CarRacing, fills the replay buffer with ``--random-steps``
random steps, then trains and prints, every ``--every`` updates: the mean |pre-tanh output| of the actor on a
replay batch, the share of action entries at |a| > 0.99, and the actor's last pre-clip gradient norm.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch as th

from sb3_carla_td3 import load_config
from sb3_carla_td3.callbacks.saturation import saturation_fraction
from sb3_carla_td3.validation.runner import build_model, make_vec_env

REPO = Path(__file__).resolve().parent.parent


def pre_tanh(model, observations) -> th.Tensor:
    """The actor head's output before its final tanh."""
    features = model.policy.encode(observations) if model.encoder == "shared" else observations
    with th.no_grad():
        inputs = model.actor.extract_features(features, model.actor.features_extractor)
        return model.actor.mu[:-1](inputs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "phase1_validation.yaml")
    parser.add_argument("--encoder", choices=("separate", "shared"), default="separate")
    parser.add_argument("--random-steps", type=int, default=300)
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--every", type=int, default=20)
    args = parser.parse_args(argv)

    config = load_config(args.config)
    config.encoder = dataclasses.replace(config.encoder, mode=args.encoder)
    config.td3 = dataclasses.replace(config.td3, learning_starts=args.random_steps)
    model = build_model(config, make_vec_env(config, config.run.seed))
    model.learn(args.random_steps)  # random actions only: learning starts after these steps
    batch = model.replay_buffer.sample(100).observations
    print(f"encoder={args.encoder}  updates | mean |pre-tanh| | saturated share | actor grad norm (pre-clip)")
    print(f"  {0:>5} | {float(pre_tanh(model, batch).abs().mean()):14.3f} |", end="")
    print(f" {saturation_fraction(th.tanh(pre_tanh(model, batch))):15.2f} | -")
    for done in range(args.every, args.updates + 1, args.every):
        model.train(gradient_steps=args.every, batch_size=model.batch_size)
        outputs = pre_tanh(model, batch)
        stats = model.last_train_stats
        norm = stats.actor_grad_norm_pre if stats is not None and stats.actor_grad_norm_pre is not None else float("nan")
        share = saturation_fraction(th.tanh(outputs))
        print(f"  {done:>5} | {float(outputs.abs().mean()):14.3f} | {share:15.2f} | {norm:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 20, bar 3: wall time of the design card's one-liner, ``TD3CNN("CnnPolicy", env).learn(5000)``, with defaults.

    python -m benchmarks.one_liner [--size 84] [--channels 4] [--timesteps 5000] [--threads 2] [--out docs/benchmarks.md]

The env is SB3's ``FakeImageEnv`` (random uint8 pixels, channel-first, ``--channels`` channels the env does not
announce as a frame stack, a 5-d continuous action): the cost is TD3CNN's alone, not a simulator's. Every TD3CNN
argument is its default (shared stacked NatureCNN, batch 96, 500 random steps, buffer sized to the memory). Prints
the construction time, the random-warm-up and the training phases' env steps/s and gradient steps/s, and the total.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.envs import FakeImageEnv

from benchmarks._report import machine_line, markdown_table, write_section
from sb3_carla_td3 import TD3CNN


class _PhaseClock(BaseCallback):
    """Wall-clock time at which the first gradient update's rollout starts (the end of the random warm-up)."""

    def __init__(self) -> None:
        super().__init__()
        self.warmup_end: float | None = None

    def _on_step(self) -> bool:
        if self.warmup_end is None and self.num_timesteps >= self.model.learning_starts:
            self.warmup_end = time.perf_counter()
        return True


def measure(size: int, channels: int, timesteps: int) -> dict[str, Any]:
    """Build the one-liner's model and learn ``timesteps`` steps; return the phase timings."""
    env = FakeImageEnv(screen_height=size, screen_width=size, n_channels=channels, discrete=False, channel_first=True)
    started = time.perf_counter()
    model = TD3CNN("CnnPolicy", env, seed=0)
    built = time.perf_counter()
    clock = _PhaseClock()
    model.learn(timesteps, callback=clock)
    finished = time.perf_counter()
    warmup_end = clock.warmup_end or finished
    updates = model._n_updates
    return {
        "build_s": built - started,
        "warmup_steps": min(model.learning_starts, timesteps),
        "warmup_s": warmup_end - built,
        "train_steps": max(timesteps - model.learning_starts, 0),
        "train_s": finished - warmup_end,
        "updates": updates,
        "total_s": finished - started,
        "buffer": f"{type(model.replay_buffer).__name__} ({model.buffer_size:,})",
        "batch": model.batch_size,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--timesteps", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=None, help="also write the table into this Markdown file's section")
    args = parser.parse_args(argv)
    if args.threads is not None:
        th.set_num_threads(args.threads)
    r = measure(args.size, args.channels, args.timesteps)
    warmup_rate = r["warmup_steps"] / r["warmup_s"] if r["warmup_s"] > 0 else float("nan")
    train_rate = r["train_steps"] / r["train_s"] if r["train_s"] > 0 else float("nan")
    update_rate = r["updates"] / r["train_s"] if r["train_s"] > 0 else float("nan")
    headers = ["env", "timesteps", "batch", "replay buffer", "build (s)", "warm-up steps/s", "training steps/s",
               "gradient steps/s", "total (min)"]  # fmt: skip
    row = [f"{args.channels}x{args.size}x{args.size} uint8", f"{args.timesteps:,}", str(r["batch"]), r["buffer"],
           f"{r['build_s']:.1f}", f"{warmup_rate:.0f}", f"{train_rate:.2f}", f"{update_rate:.2f}",
           f"{r['total_s'] / 60:.1f}"]  # fmt: skip
    table = markdown_table(headers, [row])
    print(machine_line())
    print(table)
    if args.out:
        shape = f"{args.channels}x{args.size}x{args.size}"
        command = f"python -m benchmarks.one_liner --size {args.size} --channels {args.channels} --timesteps {args.timesteps}"
        body = f"## The one-liner, {shape}: `TD3CNN(\"CnnPolicy\", env).learn({args.timesteps})`\n\n`{command}`"
        body += f" ({machine_line()}), every TD3CNN argument at its default:\n\n{table}"
        write_section(f"one-liner-{shape}", body, path=Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

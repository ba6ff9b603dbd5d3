"""Gradient steps per second: TD3CNN (verified clipping + stats) against SB3's TD3 on identical networks.

    python -m benchmarks.train_step [--encoder nature|pooled] [--size 84] [--batch 100] [--steps 10] [--rounds 5]
                                    [--device cpu|cuda] [--options] [--out docs/benchmarks.md]

Both algorithms get the same policy (CnnGruExtractor with the chosen CNN, net_arch [256, 256]) on a 4-frame
VecFrameStack of random 1-channel frames, SB3's replay buffer, the same batch size and device; they are timed in
interleaved rounds in one process, so that load on a shared machine hits all variants alike. ``--options`` also
measures CPU options (threads, channels_last, torch.compile of the encoders) on TD3CNN.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch as th
from stable_baselines3 import TD3
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack

from benchmarks._report import machine_line, markdown_table, write_section
from sb3_carla_td3 import TD3CNN, CnnGruExtractor


def build(kind: str, encoder: str, size: int, batch: int, device: str) -> Any:
    """A model of ``kind`` ("sb3", "td3cnn", "td3cnn-shared") whose replay buffer holds ``2 * batch`` transitions."""
    # A real 4-frame stack of single-channel frames, so replay samples are shifted (obs, next_obs) pairs.
    env = VecFrameStack(
        DummyVecEnv([lambda: FakeImageEnv(screen_height=size, screen_width=size, n_channels=1, discrete=False)]), 4
    )
    extractor = {"cnn": encoder, "rnn": None if encoder == "nature" else "gru", "frames": 4}
    policy_kwargs = {
        "net_arch": [256, 256],
        "features_extractor_class": CnnGruExtractor,
        "features_extractor_kwargs": extractor,
    }
    common = {"buffer_size": 4 * batch, "learning_starts": 10**9, "batch_size": batch, "policy_kwargs": policy_kwargs,
              "seed": 0, "device": device}  # fmt: skip
    if kind == "sb3":
        model = TD3("CnnPolicy", env, **common)
    else:
        encoder_mode = "shared" if kind == "td3cnn-shared" else "separate"
        model = TD3CNN("CnnPolicy", env, encoder=encoder_mode, replay_buffer="sb3", **common)
    model.learn(2 * batch)  # fills the buffer; learning_starts keeps it from training
    return model


def time_steps(model: Any, steps: int, batch: int) -> float:
    """Seconds for ``steps`` gradient steps (synchronised on CUDA)."""
    if model.device.type == "cuda":
        th.cuda.synchronize()
    started = time.perf_counter()
    model.train(gradient_steps=steps, batch_size=batch)
    if model.device.type == "cuda":
        th.cuda.synchronize()
    return time.perf_counter() - started


def interleaved(models: dict[str, Any], steps: int, batch: int, rounds: int) -> dict[str, list[float]]:
    """Steps/s of each model over ``rounds`` interleaved rounds, after one warm-up round."""
    for model in models.values():
        time_steps(model, 1, batch)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            rates[name].append(steps / time_steps(model, steps, batch))
    return rates


def _compile_encoders(model: Any) -> None:
    for module in (model.actor, model.actor_target, model.critic, model.critic_target):
        module.features_extractor.forward = th.compile(module.features_extractor.forward)


def _channels_last(model: Any) -> None:
    model.policy.to(memory_format=th.channels_last)


OPTIONS: dict[str, Callable[[Any], None]] = {"channels_last": _channels_last, "torch.compile(encoders)": _compile_encoders}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", choices=("nature", "pooled"), default="nature")
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="gradient steps per timed block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--options", action="store_true", help="also measure CPU options on TD3CNN")
    parser.add_argument("--out", default="docs/benchmarks.md")
    args = parser.parse_args(argv)

    kinds = {"SB3 TD3": "sb3", "TD3CNN (separate encoders)": "td3cnn", "TD3CNN (encoder='shared')": "td3cnn-shared"}
    models = {name: build(kind, args.encoder, args.size, args.batch, args.device) for name, kind in kinds.items()}
    rates = interleaved(models, args.steps, args.batch, args.rounds)
    base = statistics.median(rates["SB3 TD3"])
    rows = [[name, f"{statistics.median(r):.3g}", f"{min(r):.3g}-{max(r):.3g}", f"{statistics.median(r) / base:.2f}x"]
            for name, r in rates.items()]  # fmt: skip
    ratio = statistics.median([a / b for a, b in zip(rates["TD3CNN (separate encoders)"], rates["SB3 TD3"], strict=True)])
    shared = statistics.median(rates["TD3CNN (encoder='shared')"]) / statistics.median(rates["TD3CNN (separate encoders)"])
    command = "python -m benchmarks.train_step " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    body = [
        f"## Gradient steps per second ({args.encoder} encoder, {args.size}x{args.size}x4, batch {args.batch})",
        "",
        f"Command: `{command.strip()}`  ",
        f"Machine: {machine_line(args.device)}",
        "",
        f"{args.rounds} interleaved rounds of {args.steps} gradient steps each after a warm-up; identical "
        "CnnGruExtractor networks, buffers, batch and device. Range = slowest..fastest round.",
        "",
        markdown_table(["algorithm", "steps/s (median)", "range", "vs SB3 TD3"], rows),
        f"TD3CNN / TD3 per round (median of the per-round ratios): **{ratio:.3f}**; "
        f"shared / separate encoders: **{shared:.2f}x**.",
    ]
    if args.options and args.device == "cpu":
        body += ["", "CPU options on TD3CNN (separate encoders), each against a fresh baseline in interleaved rounds:", ""]
        option_rows = []
        for threads in sorted({1, th.get_num_threads()}):
            th.set_num_threads(threads)
            r = interleaved({"t": build("td3cnn", args.encoder, args.size, args.batch, "cpu")}, args.steps, args.batch, 3)
            option_rows.append([f"torch.set_num_threads({threads})", f"{statistics.median(r['t']):.3g}", ""])
        for name, apply in OPTIONS.items():
            baseline, variant = (build("td3cnn", args.encoder, args.size, args.batch, "cpu") for _ in range(2))
            try:
                apply(variant)
                r = interleaved({"base": baseline, "variant": variant}, args.steps, args.batch, 3)
                effect = statistics.median(r["variant"]) / statistics.median(r["base"])
                option_rows.append([name, f"{statistics.median(r['variant']):.3g}", f"{effect:.2f}x"])
            except Exception as error:  # report, don't hide: an option that fails here is a result
                option_rows.append([name, "failed", f"{type(error).__name__}: {str(error)[:80]}"])
        body.append(markdown_table(["option", "steps/s", "vs baseline"], option_rows))
    text = "\n".join(body)
    print(text)
    write_section(f"train_step_{args.encoder}_{args.device}", text, path=__import__("pathlib").Path(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

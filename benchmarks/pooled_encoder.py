"""Issue 20, item 3: how cheap the design card's pooled CNN + GRU can be made on a CPU without changing its function.

    python -m benchmarks.pooled_encoder [--size 40] [--frames 2] [--batch 96] [--rounds 5] [--threads 1]
                                        [--out docs/benchmarks.md]

Times the encoder's share of one shared-encoder TD3CNN critic update (:meth:`CnnGruExtractor.forward_pair` on a
frame-stacked batch: obs with gradient, next obs without, then ``backward``) in variants that compute the same
function, in interleaved rounds so that load on a shared machine hits them alike. Reports process CPU milliseconds
(which leave out waiting for a core) and checks that each variant's features equal the baseline's.

- ``pool before activation``: 2x2 max pooling commutes with the monotone LeakyReLU, so pooling first runs the
  activation on a quarter of the values (what ``ConvEncoder`` does since issue 20);
- ``channels_last``: NHWC memory format for the convolutions (oneDNN's preferred layout);
- ``pool before activation, channels_last``: both, ``ConvEncoder``'s pooled layout since issue 20.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch as th
from gymnasium import spaces
from torch import nn

from benchmarks._report import machine_line, markdown_table, write_section
from sb3_carla_td3.extractors import ENCODER_PRESETS, CnnGruExtractor


def _activation_after_pool(encoder: CnnGruExtractor, after: bool) -> None:
    """Reorder every (conv, activation, max-pool) triple of the encoder's CNN: pool first when ``after``."""
    layers = list(encoder.cnn.convs)
    i = 0
    while i < len(layers) - 2:
        a, b = layers[i + 1], layers[i + 2]
        pair = (a, b) if isinstance(a, nn.MaxPool2d) else (b, a)  # (pool, activation)
        if isinstance(a, nn.MaxPool2d | nn.LeakyReLU) and isinstance(b, nn.MaxPool2d | nn.LeakyReLU):
            layers[i + 1], layers[i + 2] = pair if after else pair[::-1]
            i += 3
        else:
            i += 1
    encoder.cnn.convs = nn.Sequential(*layers)


def build(size: int, frames: int, variant: str) -> CnnGruExtractor:
    space = spaces.Box(0, 255, (frames, size, size), dtype="uint8")
    th.manual_seed(0)
    encoder = CnnGruExtractor(space, frames=frames, **ENCODER_PRESETS["pooled_gru"])  # type: ignore[arg-type]
    _activation_after_pool(encoder, after="pool before" in variant)
    encoder.cnn.channels_last = "channels_last" in variant  # what ConvEncoder.forward reads; and the weights:
    encoder.cnn.convs.to(memory_format=th.channels_last if encoder.cnn.channels_last else th.contiguous_format)
    return encoder


def step(encoder: CnnGruExtractor, obs: th.Tensor, next_obs: th.Tensor) -> th.Tensor:
    features, next_features = encoder.forward_pair(obs, next_obs)
    (features.sum() + 0 * next_features.sum()).backward()
    return features.detach()


VARIANTS = [
    "baseline (activation then pool)",
    "pool before activation",
    "channels_last",
    "pool before activation, channels_last",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    th.set_num_threads(args.threads)
    generator = th.Generator().manual_seed(0)
    stack = th.rand(args.batch, args.frames + 1, args.size, args.size, generator=generator)
    obs, next_obs = stack[:, :-1].contiguous(), stack[:, 1:].contiguous()  # a real frame stack: shared frames
    encoders = {v: build(args.size, args.frames, v) for v in VARIANTS}
    reference = step(copy.deepcopy(encoders[VARIANTS[0]]), obs, next_obs)
    cpu_ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
    max_error: dict[str, float] = {}
    for v, encoder in encoders.items():
        max_error[v] = float((step(encoder, obs, next_obs) - reference).abs().max())  # warm-up
    for _ in range(args.rounds):
        for v, encoder in encoders.items():
            run: Callable[[], th.Tensor] = lambda e=encoder: step(e, obs, next_obs)  # noqa: E731
            started = time.process_time()
            run()
            cpu_ms[v].append((time.process_time() - started) * 1000)
    base = statistics.median(cpu_ms[VARIANTS[0]])
    rows = [
        [v, f"{statistics.median(ms):.0f}", f"{min(ms):.0f}-{max(ms):.0f}", f"{base / statistics.median(ms):.2f}x",
         f"{max_error[v]:.1e}"]
        for v, ms in cpu_ms.items()
    ]
    table = markdown_table(["variant", "CPU ms (median)", "range", "vs baseline", "max abs feature difference"], rows)
    shape = f"{args.frames}x{args.size}x{args.size}, batch {args.batch}"
    print(f"pooled CNN + GRU-48, forward_pair + backward, {shape}; {machine_line()}\n\n{table}")
    if args.out:
        command = (f"python -m benchmarks.pooled_encoder --size {args.size} --frames {args.frames} --batch {args.batch} "
                   f"--rounds {args.rounds} --threads {args.threads}")  # fmt: skip
        body = f"## The pooled CNN + GRU's encoder step ({shape})\n\n`{command}` ({machine_line()})\n\n{table}"
        write_section(f"pooled-encoder-{args.size}", body, path=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

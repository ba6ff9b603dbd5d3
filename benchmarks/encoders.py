"""Cost of the image encoders: parameters, forward and forward+backward time, peak memory.

Run as ``python -m benchmarks.encoders [--device cpu|cuda] [--batch 100] [--size 84] [--repeats 3] [--out PATH]``.
It prints a Markdown table and writes it to the "encoders" section of docs/benchmarks.md.

Every encoder is measured in a fresh spawned process, so that the peak-memory figure of one does not hide another's:
on CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory allocated before the timed passes; on CPU it is
the increase of the process's peak resident set size (``ru_maxrss``) over its value after building the encoder and
the input batch.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch as th
from gymnasium import spaces

from benchmarks._report import BENCHMARKS_MD, machine_line, markdown_table, write_section
from sb3_carla_td3.extractors import CnnGruExtractor

FRAMES = 4

# name -> CnnGruExtractor keyword arguments
ENCODERS: dict[str, dict[str, str | int | None]] = {
    "stacked NatureCNN (SB3 CnnPolicy)": {"cnn": "nature", "rnn": None},
    "NatureCNN + GRU-48": {"cnn": "nature", "rnn": "gru", "rnn_hidden": 48},
    "pooled CNN + GRU-48 (default)": {"cnn": "pooled", "rnn": "gru", "rnn_hidden": 48},
    "pooled CNN + LSTM-256 (seed's old)": {"cnn": "pooled", "rnn": "lstm", "rnn_hidden": 256},
}


@dataclass
class Measurement:
    """Cost of one encoder for one input batch."""

    cnn_params: int
    """parameters of the CNN (conv stack and linear layer)"""
    rnn_params: int
    """parameters of the GRU or LSTM (0 without one)"""
    total_params: int
    """all parameters of the extractor"""
    features_dim: int
    """output features per observation"""
    forward_ms: float
    """median wall time of one forward pass under ``torch.no_grad()``, milliseconds"""
    forward_cpu_ms: float
    """median process CPU time (all threads) of the same pass, milliseconds"""
    backward_ms: float
    """median wall time of one forward pass with autograd plus ``backward()``, milliseconds"""
    backward_cpu_ms: float
    """median process CPU time (all threads) of the same pass, milliseconds"""
    peak_mib: float
    """peak memory increase during the timed passes, MiB (see the module docstring)"""


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _timed_ms(function: Callable[[], None], device: str) -> tuple[float, float]:
    """Wall time and process CPU time (all threads) of one call, milliseconds, waiting for the GPU on CUDA."""
    if device.startswith("cuda"):
        th.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    if device.startswith("cuda"):
        th.cuda.synchronize()
    return (time.perf_counter() - wall) * 1000.0, (time.process_time() - cpu) * 1000.0


def measure(kwargs: dict[str, str | int | None], device: str, batch: int, size: int, repeats: int) -> Measurement:
    """Build one encoder and time it on a random batch of four-frame grayscale observations.

    :param kwargs: CnnGruExtractor keyword arguments (cnn, rnn, rnn_hidden)
    :param device: torch device, "cpu" or "cuda"
    :param batch: observations per batch, >= 1
    :param size: image height and width in pixels, >= the encoder's minimum (29 pooled, 36 nature)
    :param repeats: timed passes of each kind after one untimed warm-up pass, >= 1; the median is reported
    :return: parameters, median times and peak memory
    """
    th.manual_seed(0)
    space = spaces.Box(low=0, high=255, shape=(FRAMES, size, size), dtype=np.uint8)
    extractor = CnnGruExtractor(space, frames=FRAMES, **kwargs).to(device)
    images = th.rand(batch, FRAMES, size, size, device=device)
    counts = extractor.parameter_counts()

    def forward() -> None:
        with th.no_grad():
            extractor(images)

    def forward_backward() -> None:
        extractor.zero_grad(set_to_none=True)
        extractor(images).sum().backward()

    if device.startswith("cuda"):
        th.cuda.synchronize()
        th.cuda.reset_peak_memory_stats()
        baseline = th.cuda.memory_allocated()
    else:
        baseline = _peak_rss_bytes()
    forward()
    forward_backward()
    forward_times = [_timed_ms(forward, device) for _ in range(repeats)]
    backward_times = [_timed_ms(forward_backward, device) for _ in range(repeats)]
    peak = th.cuda.max_memory_allocated() if device.startswith("cuda") else _peak_rss_bytes()
    return Measurement(
        cnn_params=counts["cnn"],
        rnn_params=counts["rnn"],
        total_params=counts["total"],
        features_dim=extractor.features_dim,
        forward_ms=statistics.median(wall for wall, _ in forward_times),
        forward_cpu_ms=statistics.median(cpu for _, cpu in forward_times),
        backward_ms=statistics.median(wall for wall, _ in backward_times),
        backward_cpu_ms=statistics.median(cpu for _, cpu in backward_times),
        peak_mib=(peak - baseline) / 2**20,
    )


def _measure_in_fresh_process(
    kwargs: dict[str, str | int | None], device: str, batch: int, size: int, repeats: int
) -> Measurement:
    """Run :func:`measure` in a new spawned process, so that its peak memory starts from a clean slate."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, kwargs, device, batch, size, repeats).result()


def report(
    results: dict[str, Measurement], command: str, device: str, batch: int, size: int, repeats: int, load: tuple[float, float]
) -> str:
    """Markdown section: heading, command, machine, table and the GRU-48 / LSTM-256 parameter ratios.

    :param results: one measurement per encoder name, in table order
    :param command: the exact command line that produced the numbers
    :param device: the torch device measured on
    :param batch: observations per batch
    :param size: image height and width in pixels
    :param repeats: timed passes per median
    :param load: the 1-minute load average before and after the measurements (other processes competing for the CPU
        inflate the CPU times)
    :return: the section text
    """
    memory = "max_memory_allocated increase" if device.startswith("cuda") else "peak RSS increase"
    headers = ["encoder", "CNN params", "RNN params", "total params", "features", "forward ms (CPU ms)",
               "fwd+bwd ms (CPU ms)", f"peak MiB ({memory})"]  # fmt: skip
    rows = [
        [name, f"{m.cnn_params:,}", f"{m.rnn_params:,}", f"{m.total_params:,}", str(m.features_dim),
         f"{m.forward_ms:.0f} ({m.forward_cpu_ms:.0f})", f"{m.backward_ms:.0f} ({m.backward_cpu_ms:.0f})",
         f"{m.peak_mib:.0f}"]
        for name, m in results.items()
    ]  # fmt: skip
    gru, lstm = results["pooled CNN + GRU-48 (default)"], results["pooled CNN + LSTM-256 (seed's old)"]
    return (
        "## Encoders\n\n"
        f"`{command}`\n\n"
        f"Measured on {machine_line(device)}, {os.cpu_count()} CPUs, 1-minute load average {load[0]:.1f} before and "
        f"{load[1]:.1f} after the run. Batch of {batch} observations of {FRAMES} stacked grayscale "
        f"{size}x{size} frames (random floats in [0, 1)); median of {repeats} timed pass(es) after one warm-up. "
        '"forward" runs under `torch.no_grad()`; "fwd+bwd" is a forward pass with autograd plus `backward()` of '
        "the summed features. Times are wall-clock milliseconds, with the process CPU time of all threads in "
        "parentheses (it leaves out waiting for a core on a shared machine, but counts every thread). "
        "Each encoder runs in a fresh process; peak memory is "
        + (
            "`torch.cuda.max_memory_allocated()` minus the memory allocated before the passes.\n\n"
            if device.startswith("cuda")
            else "the increase of the process's peak RSS (`ru_maxrss`) over its value after building the encoder "
            "and the input batch (so it includes allocator overhead, not only tensors).\n\n"
        )
        + markdown_table(headers, rows)
        + '\nThe seed claims GRU-48 has "5.3× fewer parameters" than LSTM-256; 5.3 is only the ratio of the hidden '
        f"sizes (256 / 48). With 512 CNN features as input, the recurrent layer itself is {lstm.rnn_params:,} / "
        f"{gru.rnn_params:,} = **{lstm.rnn_params / gru.rnn_params:.2f}×** smaller, but the whole encoder is only "
        f"{lstm.total_params:,} / {gru.total_params:,} = **{lstm.total_params / gru.total_params:.2f}×** smaller: "
        f"the per-frame CNN ({gru.cnn_params:,} parameters) is the same in both and "
        f"holds {gru.cnn_params / gru.total_params:.0%} of the GRU-48 encoder.\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure every encoder, print the table and write it to the "encoders" section of ``--out``.

    :param argv: command-line arguments without the program name; ``None`` reads ``sys.argv[1:]``
    :return: the exit status, 0 on success
    """
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoders", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="torch device to measure on")
    parser.add_argument("--batch", type=int, default=100, help="observations per batch")
    parser.add_argument("--size", type=int, default=84, help="image height and width in pixels (>= 36)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per median, after one warm-up")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD, help="Markdown file whose encoders section is replaced")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not th.cuda.is_available():
        parser.error("--device cuda was requested but torch.cuda.is_available() is False")
    for name in ("batch", "size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")

    load_before = os.getloadavg()[0]
    results: dict[str, Measurement] = {}
    for name, kwargs in ENCODERS.items():
        print(f"measuring {name} ...", flush=True)
        results[name] = _measure_in_fresh_process(kwargs, args.device, args.batch, args.size, args.repeats)
    command = shlex.join(["python", "-m", "benchmarks.encoders", *argv])
    body = report(results, command, args.device, args.batch, args.size, args.repeats, (load_before, os.getloadavg()[0]))
    print(body)
    print(f"written to {write_section('encoders', body, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

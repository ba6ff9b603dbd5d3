"""Replay-buffer memory and sampling speed: SB3's ReplayBuffer / DictReplayBuffer against the frame-stack buffers.

Run as ``python -m benchmarks.replay [--size N] [--batch 100] [--reps 300] [--out docs/benchmarks.md]``.

Every buffer is filled through ``add()`` with the same synthetic VecFrameStack trajectory (4×84×84 uint8 stacks of
random frames, newest last, zero-padded episode starts, 500-step episodes alternately terminated and truncated; the
Dict variant adds a 53-float vector; 2-D float32 actions). Bytes per transition come from the buffers' actual arrays;
the 1M-transition projection multiplies them. Sample time is the median wall and process-CPU time of ``sample(batch)``
(index draw, gather, conversion to CPU tensors), the buffers of one group measured in interleaved rounds.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, NStepReplayBuffer, ReplayBuffer

from benchmarks._report import BENCHMARKS_MD, machine_line, markdown_table, write_section
from sb3_carla_td3.buffers import DictFrameStackReplayBuffer, FrameStackReplayBuffer

FRAMES, HEIGHT, WIDTH, VEC_DIM, ACTION_DIM, EPISODE = 4, 84, 84, 53, 2, 500
ONE_MILLION = 1_000_000


def trajectory(n_steps: int, with_vector: bool, seed: int = 0) -> Iterator[tuple]:
    """Yield ``add()`` arguments (n_envs=1) of a VecFrameStack-style trajectory.

    :param n_steps: number of transitions
    :param with_vector: yield Dict observations ``{"image", "vec"}`` instead of the image alone
    :param seed: seed of the frame pool, actions and rewards
    :return: an iterator over ``(obs, next_obs, action, reward, done, infos)``
    """
    rng = np.random.default_rng(seed)
    pool = rng.integers(1, 256, size=(257, 1, HEIGHT, WIDTH), dtype=np.uint8)
    stack = np.zeros((1, FRAMES, HEIGHT, WIDTH), dtype=np.uint8)
    stack[0, -1] = pool[0]
    t = 0
    for step in range(n_steps):
        vec = np.full((1, VEC_DIM), step, dtype=np.float32)
        next_stack = np.concatenate([stack[:, 1:], pool[(step + 1) % 257][None]], axis=1)
        t += 1
        done = t == EPISODE
        truncated = done and (step // EPISODE) % 2 == 1
        infos = [{"TimeLimit.truncated": truncated}] if done else [{}]
        action = rng.uniform(-1, 1, (1, ACTION_DIM)).astype(np.float32)
        reward = rng.normal(size=1).astype(np.float32)
        if with_vector:
            yield {"image": stack, "vec": vec}, {"image": next_stack, "vec": vec + 1}, action, reward, np.array([done]), infos
        else:
            yield stack, next_stack, action, reward, np.array([done]), infos
        if done:
            t, next_stack = 0, np.zeros_like(stack)
            next_stack[0, -1] = pool[(step + 2) % 257]
        stack = next_stack


def array_bytes_per_transition(buffer: ReplayBuffer) -> float:
    """Bytes per transition of an SB3 buffer, from its arrays.

    :param buffer: a filled or empty SB3 ``ReplayBuffer`` / ``DictReplayBuffer`` (or one of ours)
    :return: total array bytes divided by the capacity in transitions
    """
    if isinstance(buffer, FrameStackReplayBuffer | DictFrameStackReplayBuffer):
        return buffer.bytes_per_transition
    arrays = [buffer.actions, buffer.rewards, buffer.dones, buffer.timeouts]
    for obs in (buffer.observations, getattr(buffer, "next_observations", None)):
        if isinstance(obs, dict):
            arrays += list(obs.values())
        elif obs is not None:
            arrays.append(obs)
    return sum(a.nbytes for a in arrays) / (buffer.buffer_size * buffer.n_envs)


def time_sampling(buffers: dict[str, ReplayBuffer], batch: int, reps: int, block: int = 10) -> dict[str, tuple[float, float]]:
    """Median wall and CPU seconds per ``sample(batch)`` for each buffer, measured in interleaved rounds.

    CPU time (``time.process_time``) is reported next to wall time because the machine may be shared: it leaves out
    the time the process waits for a core.

    :param buffers: filled buffers by label
    :param batch: batch size
    :param reps: number of timed calls per buffer
    :param block: consecutive calls per timing (each round times one block of every buffer)
    :return: (median wall seconds, median CPU seconds) per call, by label
    """
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in buffers}
    np.random.seed(0)
    for buffer in buffers.values():  # warm-up
        for _ in range(block):
            buffer.sample(batch)
    for _ in range(max(reps // block, 1)):
        for name, buffer in buffers.items():
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(block):
                buffer.sample(batch)
            times[name].append(((time.perf_counter() - wall) / block, (time.process_time() - cpu) / block))
    return {name: tuple(float(np.median(column)) for column in zip(*t, strict=True)) for name, t in times.items()}  # type: ignore[misc]


def measure_group(
    makers: dict[str, tuple[type[ReplayBuffer], dict]], size: int, batch: int, reps: int, with_vector: bool
) -> dict[str, dict[str, float]]:
    """Build, fill and time one group of buffers (same observation space), then free them.

    :param makers: label -> (buffer class, constructor kwargs); the first one is the reference for the ratios
    :param size: buffer capacity in transitions, also the number of transitions added
    :param batch: sample batch size
    :param reps: timed calls per buffer
    :param with_vector: whether the observation is the Dict (image + 53-float vector)
    :return: label -> {"bytes": bytes per transition, "wall": seconds per call, "cpu": CPU seconds per call}
    """
    image = spaces.Box(0, 255, (FRAMES, HEIGHT, WIDTH), np.uint8)
    space = spaces.Dict({"image": image, "vec": spaces.Box(-np.inf, np.inf, (VEC_DIM,), np.float32)}) if with_vector else image
    action_space = spaces.Box(-1, 1, (ACTION_DIM,), np.float32)
    buffers = {name: cls(size, space, action_space, "cpu", **kwargs) for name, (cls, kwargs) in makers.items()}
    for args in trajectory(size, with_vector):
        for buffer in buffers.values():
            buffer.add(*args)
    seconds = time_sampling(buffers, batch, reps)
    results = {
        name: {"bytes": array_bytes_per_transition(b), "wall": seconds[name][0], "cpu": seconds[name][1]}
        for name, b in buffers.items()
    }
    buffers.clear()
    gc.collect()
    return results


def table_rows(results: dict[str, dict[str, float]], observation: str) -> list[list[str]]:
    """Format one group's results; ratios are relative to the group's first (SB3 default) buffer.

    :param results: output of ``measure_group``
    :param observation: observation description for the table
    :return: table rows
    """
    ref = next(iter(results.values()))
    return [
        [
            name,
            observation,
            f"{r['bytes']:,.0f}",
            f"{r['bytes'] * ONE_MILLION / 1e9:.2f}",
            f"{ref['bytes'] / r['bytes']:.2f}×",
            f"{r['wall'] * 1e3:.2f}",
            f"{r['cpu'] * 1e3:.2f}",
            f"{ref['wall'] / r['wall']:.1f}×",
        ]
        for name, r in results.items()
    ]


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark, print the table and write it into the ``replay`` section of docs/benchmarks.md.

    :param argv: command-line arguments (``sys.argv[1:]`` when None)
    :return: the Markdown section written
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=50_000, help="transitions stored in each buffer for the timing")
    parser.add_argument("--batch", type=int, default=100, help="sample batch size")
    parser.add_argument("--reps", type=int, default=300, help="timed sample() calls per buffer (median reported)")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD, help="Markdown file to update")
    args = parser.parse_args(argv)
    for name in ("size", "batch", "reps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")

    frame_stack, n_step = {"frames": FRAMES}, {"n_steps": 3, "gamma": 0.99}
    box = {
        "SB3 ReplayBuffer (default)": (ReplayBuffer, {}),
        "SB3 ReplayBuffer, optimize_memory_usage (no timeout handling)": (
            ReplayBuffer,
            {"optimize_memory_usage": True, "handle_timeout_termination": False},
        ),
        "FrameStackReplayBuffer": (FrameStackReplayBuffer, frame_stack),
        "SB3 NStepReplayBuffer, n_steps=3": (NStepReplayBuffer, n_step),
        "FrameStackReplayBuffer, n_steps=3": (FrameStackReplayBuffer, {**frame_stack, **n_step}),
    }
    dict_ = {
        "SB3 DictReplayBuffer (default)": (DictReplayBuffer, {}),
        "DictFrameStackReplayBuffer": (DictFrameStackReplayBuffer, frame_stack),
        "DictFrameStackReplayBuffer, n_steps=3 (SB3 has no n-step Dict buffer)": (
            DictFrameStackReplayBuffer,
            {**frame_stack, **n_step},
        ),
    }
    box_results = measure_group(box, args.size, args.batch, args.reps, with_vector=False)
    dict_results = measure_group(dict_, args.size, args.batch, args.reps, with_vector=True)
    image = f"{FRAMES}×{HEIGHT}×{WIDTH} uint8"
    rows = table_rows(box_results, image) + table_rows(dict_results, f"{image} + {VEC_DIM} float32")
    headers = ["buffer", "observation", "bytes / transition", "1M transitions (GB)", "smaller than SB3 default"]
    headers += [f"sample({args.batch}) wall ms", f"sample({args.batch}) CPU ms", "sample speed-up vs SB3 default (wall)"]
    sb3, ours = dict_results["SB3 DictReplayBuffer (default)"], dict_results["DictFrameStackReplayBuffer"]
    command = "python -m benchmarks.replay " + " ".join(argv if argv is not None else sys.argv[1:])
    body = (
        "## Replay buffer memory and sampling\n\n"
        f"Command: `{command.strip()}`  \n"
        f"Machine: {machine_line('cpu')}\n\n"
        f"Each buffer held {args.size:,} transitions, added through `add()` (500-step episodes, alternately terminated "
        f"and truncated; 2-D float32 actions). Sample times are medians over {args.reps} `sample({args.batch})` calls "
        "(blocks of 10, interleaved between the buffers of a group) in wall-clock and in process CPU time, which "
        "leaves out waiting for a core on a shared machine. Bytes per transition come from the buffers' arrays; "
        "1M transitions (GB = 10^9 bytes) is that times 10^6.\n\n"
        + markdown_table(headers, rows)
        + "\nIssue 7 targets, 4×84×84 frames + 53-float vector: 1M transitions in at most 7.5 GB: "
        f"**{ours['bytes'] * ONE_MILLION / 1e9:.2f} GB**; at least 7.5× smaller than SB3's default: "
        f"**{sb3['bytes'] / ours['bytes']:.2f}×**; sampling at least as fast as SB3's buffer: "
        f"**{sb3['wall'] / ours['wall']:.1f}× faster** in wall time ({sb3['cpu'] / ours['cpu']:.1f}× in CPU time).\n"
    )
    print(body)
    write_section("replay", body, path=args.out)
    return body


if __name__ == "__main__":
    main()

"""Phase 3 of the seed plan (Task 8) through the library API: a long run with evaluation, atomic checkpoints,
resume and Ctrl-C handling (Ctrl-C saves a checkpoint and writes the report so far).

    python examples/phase3_training.py [--config configs/phase3_training.yaml] [--timesteps N] [--out DIR]
    python examples/phase3_training.py --resume runs/example-phase3
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sb3_carla_td3 import load_config
from sb3_carla_td3.validation.phases import phase3

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "phase3_training.yaml")
    parser.add_argument("--timesteps", type=int, help="override run.total_timesteps")
    parser.add_argument("--out", type=Path, default=Path("runs/example-phase3"))
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    args = parser.parse_args(argv)

    if args.resume is not None:
        report = phase3(None, args.resume, resume=True)
    else:
        config = load_config(args.config)
        if args.timesteps is not None:
            config.run = dataclasses.replace(config.run, total_timesteps=args.timesteps)
        report = phase3(config, args.out)
    print(report.table())
    print(f"\nVerdict: {report.verdict}")
    return 130 if "interrupted" in report.title else 0


if __name__ == "__main__":
    raise SystemExit(main())

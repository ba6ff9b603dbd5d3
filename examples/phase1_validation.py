"""Phase 1 of the seed plan (Tasks 1-5) through the library API: train 5K steps, print the Task 5 table.

    python examples/phase1_validation.py [--config configs/phase1_validation.yaml] [--timesteps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sb3_carla_td3 import load_config
from sb3_carla_td3.validation.phases import phase1

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "phase1_validation.yaml")
    parser.add_argument("--timesteps", type=int, help="override run.total_timesteps")
    parser.add_argument("--out", type=Path, default=Path("runs/example-phase1"))
    args = parser.parse_args(argv)

    config = load_config(args.config)
    if args.timesteps is not None:
        config.run = dataclasses.replace(config.run, total_timesteps=args.timesteps)
    report = phase1(config, args.out)
    print(report.table())
    print(f"\nVerdict: {report.verdict}; full report in {args.out / 'report.md'}")
    return 1 if report.verdict == "FAIL" else 0


if __name__ == "__main__":
    raise SystemExit(main())

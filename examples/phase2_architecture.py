"""Phase 2 of the seed plan (Tasks 6-7) through the library API: stacked NatureCNN vs pooled + GRU-48 vs
pooled + LSTM-256 with identical seeds and steps, and a verdict on each of the seed's claims.

    python examples/phase2_architecture.py [--config configs/phase2_architecture.yaml] [--timesteps N] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from sb3_carla_td3 import load_config
from sb3_carla_td3.validation.phases import phase2

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "phase2_architecture.yaml")
    parser.add_argument("--timesteps", type=int, help="override run.total_timesteps")
    parser.add_argument("--out", type=Path, default=Path("runs/example-phase2"))
    args = parser.parse_args(argv)

    config = load_config(args.config)
    if args.timesteps is not None:
        config.run = dataclasses.replace(config.run, total_timesteps=args.timesteps)
    report = phase2(config, args.out)
    print(report.table())
    for heading, body in report.sections:
        print(f"\n{heading}\n{body}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Entry for StepSaver training: calibration Parquet(s) → predictor artifact folder (the training code:
``pipelines/training/stepsaver.py``).

    python -m jobs.train_stepsaver --calibration models/stepsaver/calibration.parquet --out models/stepsaver
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calibration", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--threshold", type=float)
    p.add_argument("--target-under-rate", type=float, default=0.1)
    p.add_argument("--risk", type=float)
    p.add_argument("--scheduler")
    p.add_argument("--precision", default="fp32", choices=["fp32", "int8", "bf16"])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--layers", type=int, default=0, help="encoder transformer layers used (0 = all 6)")
    p.add_argument("--hidden", type=int, default=0, help="head hidden units (0 = linear)")
    p.add_argument("--buckets", type=lambda t: [int(x) for x in t.split(",") if x.strip()],
                   help="predictor step counts, a subset of the swept grid (default: all)")
    a = p.parse_args(argv)
    from pipelines.training.stepsaver import train_from_calibration

    m = train_from_calibration(a.calibration, a.out, a.threshold, a.target_under_rate, a.risk, a.scheduler,
                               a.precision, a.max_tokens, a.layers, a.hidden, buckets=a.buckets)
    print(json.dumps(m, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

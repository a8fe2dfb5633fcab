"""Entry for the early-stop signal's calibration: record denoising trajectories, fit the learned signal, pick its
level. What it does and why: ``pipelines/training/early_stop.py``.

    python -m jobs.calibrate_early_stop                  # 240 rows × budgets 20/30/50/75, ~15 min on 2 cores
    python -m jobs.calibrate_early_stop --smoke-test     # 8 rows × budgets 8/12, a minute
    python -m jobs.calibrate_early_stop --fit-only       # refit from the trajectories already recorded
"""

from __future__ import annotations

import argparse
import sys

from pipelines.training.early_stop import BUDGETS, MODEL, OUT


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--rows", type=int, default=240, help="(prompt, seed) rows")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    ap.add_argument("--criterion", type=float, default=0.995, help="SSIM a check's x̂0 must reach to count as passing")
    ap.add_argument("--label", choices=("final", "ref"), default="final",
                    help="what a passing x̂0 is compared with: its budget's last image, or the 100-step image")
    ap.add_argument("--max-loss", type=float, default=0.001, help="mean SSIM the chosen level may lose vs the budget")
    ap.add_argument("--min-steps", type=int, default=6)
    ap.add_argument("--interval", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=OUT, help="artifact folder: signal.json and trajectories.parquet")
    ap.add_argument("--work", default="out/early_stop_calibration", help="per-batch trajectory parts (for --resume)")
    ap.add_argument("--results", default="bench/results/early_stop_calibration.json")
    ap.add_argument("--resume", action="store_true", help="keep the parts already under --work")
    ap.add_argument("--fit-only", action="store_true", help="fit from --out's trajectories.parquet, run no model")
    ap.add_argument("--smoke-test", action="store_true", help="8 rows, budgets 8/12, into out/early_stop_smoke")
    a = ap.parse_args(argv)
    if a.smoke_test:
        a.rows, a.budgets, a.batch_size = 8, "8,12", 8
        a.out, a.work, a.results = "out/early_stop_smoke", "out/early_stop_smoke/work", "out/early_stop_smoke/results.json"
    from pipelines.training.early_stop import SignalCalibration, calibrate

    calibrate(SignalCalibration(**{**vars(a), "budgets": tuple(int(b) for b in a.budgets.split(","))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

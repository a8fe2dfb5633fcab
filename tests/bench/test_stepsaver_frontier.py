"""The frontier arithmetic of bench/stepsaver.py (pure: no model)."""

import importlib.util
import math
from pathlib import Path

import numpy as np

spec = importlib.util.spec_from_file_location("bench_stepsaver", Path(__file__).resolve().parents[2] / "bench" / "stepsaver.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_interp_evals_is_linear_between_points_and_nan_beyond():
    q, e = np.array([0.90, 0.95, 0.99]), np.array([10.0, 20.0, 40.0])
    assert bench.interp_evals(q, e, 0.95) == 20.0
    assert math.isclose(bench.interp_evals(q, e, 0.97), 30.0)
    assert math.isnan(bench.interp_evals(q, e, 0.995))


def test_interp_evals_uses_the_monotone_envelope():
    # a dip at the middle count must not make a lower quality look more expensive than it is
    q, e = np.array([0.90, 0.96, 0.94, 0.99]), np.array([10.0, 20.0, 30.0, 40.0])
    assert bench.interp_evals(q, e, 0.96) == 20.0
    assert math.isclose(bench.interp_evals(q, e, 0.975), 35.0)


def test_oracle_steps_and_point():
    grid = [4, 8, 16]
    Q = np.array([[0.99, 1.0, 1.0], [0.5, 0.99, 1.0], [0.1, 0.2, 0.97]])
    st = bench.oracle_steps(Q, grid, 0.99)
    assert st.tolist() == [4, 8, 16]  # the last row never reaches 0.99: the top count
    pt = bench.point(Q, grid, st, evals_per_step=2)
    assert pt["unet_evals"] == 2 * (4 + 8 + 16)
    assert math.isclose(pt["mean_ssim"], (0.99 + 0.99 + 0.97) / 3)

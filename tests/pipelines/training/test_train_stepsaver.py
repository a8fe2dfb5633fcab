"""StepSaver training: ordinal targets, the risk for an under-step target, re-labelling rules."""

import math

import numpy as np
import pytest

from actors.stepsaver import decode_steps, snap_to_grid
from pipelines.training.stepsaver import check_relabel, choose_risk, exceed_targets

GRID = [4, 8, 16, 32]

NAN = math.nan
FULL_099 = {"threshold": 0.99, "quality_per_step": [0.9, 0.991, 0.996]}  # every grid count swept
STOPPED_0995 = {"threshold": 0.995, "quality_per_step": [0.9, 0.996, NAN]}  # stopped at its 0.995 label
STOPPED_099 = {"threshold": 0.99, "quality_per_step": [0.9, 0.991, NAN]}  # stopped at 0.99: 0.995 unknown


def test_full_curves_and_curves_stopped_at_the_threshold_mix():
    check_relabel([FULL_099, STOPPED_0995], 0.995)
    check_relabel([FULL_099, STOPPED_0995, STOPPED_099], 0.99)


def test_a_curve_stopped_below_the_threshold_is_refused():
    with pytest.raises(ValueError, match="early-stopped at a lower threshold"):
        check_relabel([FULL_099, STOPPED_099], 0.995)


def test_targets_snap_and_choose_risk():
    np.testing.assert_array_equal(exceed_targets([4, 16, 32], GRID), [[0, 0, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(snap_to_grid([3, 9, 200], GRID), [4, 16, 32])  # rounded up, clipped
    p = np.array([[0.9, 0.5, 0.1]] * 10)
    true = [16] * 9 + [32]
    r = choose_risk(p, true, GRID, target_under_rate=0.1)
    assert decode_steps(p, GRID, r)[0] == 16 and r >= 0.1

import math

import pytest

from jobs.train_stepsaver import check_relabel

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

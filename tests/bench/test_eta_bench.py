"""The ETA bench's simulation (pure): what the README's table rests on."""

import pytest

from bench.eta import STEP_MIX, errors_at_fractions, simulate, step_list

COST = {"a_s": 0.3, "b_s_per_row": 0.0, "c_s_per_row_step": 0.011}


def test_step_list_keeps_the_mix_and_the_order():
    for order in ("shuffled", "cheap-first", "costly-first"):
        steps = step_list(1000, order)
        assert len(steps) == 1000 and {k: steps.count(k) / 1000 for k in STEP_MIX} == pytest.approx(STEP_MIX)
    assert step_list(100, "cheap-first") == sorted(step_list(100, "shuffled"))


def test_fit_is_exact_once_identifiable_and_rows_are_not():
    # costly-first: two step counts are seen before 25%; the per-batch cost is linear in rows and steps for full
    # batches, so the fit prices the rest exactly while rows × mean time is far off.
    n = 2000
    errs = errors_at_fractions(simulate(step_list(n, "costly-first"), COST), n)
    for e in errs.values():
        assert abs(e["error_fit"]) < 0.05 and e["error_rows"] > 0.5


def test_without_planning_ahead_no_estimator_sees_the_costly_tail():
    n = 2000
    errs = errors_at_fractions(simulate(step_list(n, "cheap-first"), COST, plan_ahead=False), n)
    assert all(e["error_fit"] < -0.3 and e["error_cost"] < -0.3 for e in errs.values())

"""The replay and selection rules of the early-stop calibration (pipelines/training/early_stop.py; pure: no model)."""

import numpy as np
import pytest

from pipelines.training.early_stop import auc, choose, replay, summarise


def _traj():
    # Two runs (budget 10): checks at steps 2..8; run 0's x̂0 passes from step 6, run 1 never.
    steps = [2, 4, 6, 8]
    return {
        "run": np.array([0] * 4 + [1] * 4), "step": np.array(steps * 2), "budget": np.array([10] * 8),
        "ssim_ref": np.array([0.5, 0.8, 0.95, 0.97, 0.4, 0.6, 0.7, 0.8]),
        "final_ssim_ref": np.array([0.98] * 4 + [0.9] * 4),
    }


def test_replay_stops_at_the_first_passing_check_after_min_steps():
    t = _traj()
    passes = np.array([True, False, True, True, False, False, False, False])
    r = replay(t, passes, min_steps=4)
    assert r["run"].tolist() == [0, 1]
    assert r["steps"].tolist() == [6, 10]  # step 2 passes but is before min_steps; run 1 runs its budget out
    assert r["ssim"].tolist() == [0.95, 0.9]


def test_replay_does_not_depend_on_row_order():
    t = _traj()
    passes = np.array([False, True, True, True, False, False, True, False])
    perm = np.random.default_rng(0).permutation(8)
    a = replay(t, passes, 2)
    b = replay({k: v[perm] for k, v in t.items()}, passes[perm], 2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_summarise_reports_the_loss_against_running_the_budget_out():
    t = _traj()
    s = summarise(t, np.array([False, False, True, True] + [False] * 4), 2)
    assert s["mean_steps"] == 8 and s["budget_mean_steps"] == 10 and s["stopped_share"] == 0.5
    assert s["ssim_loss"] == pytest.approx((0.98 + 0.9) / 2 - (0.95 + 0.9) / 2)


def test_choose_stops_at_the_first_candidate_over_the_loss():
    rows = [{"level": 0.99, "ssim_loss": 0.0}, {"level": 0.9, "ssim_loss": 0.0008},
            {"level": 0.8, "ssim_loss": 0.002}, {"level": 0.7, "ssim_loss": 0.0005}]
    assert choose(rows, 0.001, "level") == 0.9  # 0.7's small loss is luck after a worse candidate


def test_auc():
    y = np.array([0, 0, 1, 1])
    assert auc(np.array([0.1, 0.2, 0.8, 0.9]), y) == 1.0
    assert auc(np.array([0.9, 0.8, 0.2, 0.1]), y) == 0.0
    assert auc(np.array([0.5] * 4), y) == 0.5
    assert np.isnan(auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_fit_signal_learns_a_separable_rule_and_round_trips(tmp_path):
    from actors.early_stop import LearnedSignal
    from pipelines.training.early_stop import fit_signal

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 3] - 0.5 * x[:, 0] > 0).astype(float)  # passes late in the budget and when x̂0 moves little
    sig = fit_signal(x, y, level=0.8, meta={"criterion": 0.995})
    assert np.mean((sig.prob(x) >= 0.5) == y) > 0.95
    assert sig.weights[3] > 0 > sig.weights[0]
    back = LearnedSignal.load(sig.save(tmp_path))
    assert back == sig and back.meta["criterion"] == 0.995
    np.testing.assert_allclose(back.prob(x), sig.prob(x))

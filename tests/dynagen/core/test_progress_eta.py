"""ETA arithmetic and the plain progress line (pure)."""

import pytest

from dynagen.core.progress import (
    Snapshot, batch_cost, eta, eta_cost, eta_fit, eta_rows, format_duration, progress_details, progress_line, rate,
    units_left,
)


def sums(batches):
    """(rows, planned units, seconds) per batch → Snapshot.batch_sums."""
    out = [0.0] * 6
    for r, u, t in batches:
        for k, v in enumerate((r * r, r * u, u * u, r * t, u * t, t)):
            out[k] += v
    return tuple(out)


def test_nothing_done_yet_means_no_eta():
    s = Snapshot(elapsed_s=5.0, total=10, planned_rows=10, planned_units=100)
    assert eta_rows(s) is None and eta_cost(s) is None
    assert progress_line(s) == "images 0/10 · 0 failed · 0 skipped · 0.00 images/s · ETA ?"
    assert progress_line(Snapshot(elapsed_s=0.0, total=10, skipped=4)) == \
        "images 4/10 · 4 skipped · starting (loading models)"
    # a resumed run with nothing left: done, not "starting"
    assert progress_line(Snapshot(elapsed_s=0.0, total=10, skipped=10)) == \
        "images 10/10 · 0 failed · 10 skipped · 0.00 images/s · ETA 0s"


def test_cost_eta_prices_the_steps_left_not_the_rows_left():
    # 10 rows: 5 cheap ones (10 steps) done in 50 s, 5 costly ones (50 steps) left.
    s = Snapshot(elapsed_s=50.0, total=10, done=5, planned_rows=10, planned_units=5 * 10 + 5 * 50,
                 done_planned_units=50, done_units=50)
    assert units_left(s) == 250
    assert eta_rows(s) == pytest.approx(50.0)  # 5 rows × 10 s
    assert eta_cost(s) == pytest.approx(250.0)  # 250 steps × 1 s


def test_rows_not_yet_planned_count_at_the_mean_planned():
    # 100 rows; 20 planned so far (mean 30 steps), 10 of them done (300 steps in 30 s).
    s = Snapshot(elapsed_s=30.0, total=100, done=10, planned_rows=20, planned_units=600,
                 done_planned_units=300, done_units=300)
    assert units_left(s) == pytest.approx(300 + 80 * 30)
    assert eta_cost(s) == pytest.approx((300 + 80 * 30) * 0.1)


def test_skipped_rows_are_not_work_left():
    s = Snapshot(elapsed_s=10.0, total=10, done=2, skipped=6, planned_rows=4, planned_units=40,
                 done_planned_units=20, done_units=20)
    assert s.left == 2 and s.finished == 8
    assert eta_cost(s) == pytest.approx(20 * 0.5) and eta_rows(s) == pytest.approx(10.0)


def test_unknown_total_and_no_plan_fall_back():
    assert eta_cost(Snapshot(elapsed_s=10.0, total=None, done=3)) is None
    # every row failed on input: nothing planned, the rows estimate stands in
    s = Snapshot(elapsed_s=10.0, total=4, done=2, failed=2)
    assert eta_cost(s) == eta_rows(s) == pytest.approx(10.0)


def test_early_stopped_rows_are_priced_on_their_plan():
    # Done rows ran 10 of 20 planned steps each: the work left (planned) is priced per planned step.
    s = Snapshot(elapsed_s=20.0, total=4, done=2, planned_rows=4, planned_units=80, done_planned_units=40,
                 done_units=20)
    assert eta_cost(s) == pytest.approx(40 * 0.5)


def test_rates_and_durations():
    assert rate(0, 10) == 0.0 and rate(5, 0) == 0.0 and rate(10, 4) == 2.5
    assert [format_duration(x) for x in (None, 0, 12.4, 245, 3720)] == ["?", "0s", "12s", "4m05s", "1h02m"]


def test_line_in_the_jobs_units():
    s = Snapshot(elapsed_s=10.0, total=480, done=20, failed=2, skipped=100, planned_rows=120, planned_units=120,
                 done_planned_units=20, done_units=640)
    assert progress_line(s, "prompts", "tokens") == (
        "prompts 120/480 · 2 failed · 100 skipped · 2.00 prompts/s · 64 tokens/s · ETA 3m00s")
    assert progress_details(s)[-1] == "ETA 3m00s"


def test_fit_separates_per_image_and_per_step_cost():
    # Batches cost 0.5 s per image + 0.1 s per step: 8 images × 10 steps = 12 s, 8 × 30 = 28 s, 4 × 10 = 6 s.
    b = sums([(8, 80, 12.0), (8, 240, 28.0), (4, 40, 6.0)])
    a, c = batch_cost(Snapshot(elapsed_s=46.0, total=None, batch_sums=b))
    assert a == pytest.approx(0.5) and c == pytest.approx(0.1)
    # Cheap rows done first (8 × 10 steps in 12 s); left: 8 rows × 30 steps → 8·0.5 + 240·0.1 = 28 s of model time.
    s = Snapshot(elapsed_s=24.0, total=16, done=8, planned_rows=16, planned_units=320, done_planned_units=80,
                 done_units=80, batch_sums=sums([(8, 80, 12.0), (4, 40, 6.0)]))
    # one step count so far: no way to split the cost; the ETA takes the geometric mean of rows alone (8 × 3 s = 24 s)
    # and steps alone (240 × 0.3 s = 72 s): 41.6 s; the truth (28 s of model time × 24/18 wall/model = 37.3 s) lies between
    assert batch_cost(s) is None
    assert eta_rows(s) == pytest.approx(24.0) and eta_cost(s) == pytest.approx(72.0)
    assert eta_fit(s) == pytest.approx((24.0 * 72.0) ** 0.5)
    s = Snapshot(elapsed_s=46.0 * 2, total=28, done=20, planned_rows=28, planned_units=360 + 8 * 30,
                 done_planned_units=360, done_units=360, batch_sums=b)
    # model time left 28 s; wall runs 2× model time here (gaps, writes) → 56 s
    assert eta_fit(s) == pytest.approx(56.0) and eta(s) == eta_fit(s)
    assert eta_cost(s) == pytest.approx(240 * 92 / 360)  # steps alone: 61.3 s


def test_fit_falls_back_without_batch_times_or_with_a_negative_term():
    s = Snapshot(elapsed_s=50.0, total=10, done=5, planned_rows=10, planned_units=300, done_planned_units=50,
                 done_units=50)
    assert eta_fit(s) == eta_cost(s)
    # time falling with rows (noise): the per-image term would be negative → per step only
    b = sums([(8, 80, 10.0), (2, 80, 12.0)])
    assert batch_cost(Snapshot(elapsed_s=22.0, total=None, batch_sums=b))[0] == 0.0

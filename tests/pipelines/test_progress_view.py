"""Progress output in the job's units: a rich bar in a terminal, plain lines otherwise; then through a real run."""

import io
import json
import logging
import re

from rich.console import Console

from dynagen.core.progress import Snapshot
from pipelines.progress import BarView, LineView, make_view, quiet_ray, snapshot_of, total_rows

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def snap(done, elapsed, total=10, failed=0, skipped=0):
    return Snapshot(elapsed_s=elapsed, total=total, done=done, failed=failed, skipped=skipped,
                    planned_rows=total - skipped, planned_units=10.0 * (total - skipped), done_planned_units=10.0 * done,
                    done_units=10.0 * done)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plain_lines_every_interval_and_a_final_one():
    buf, clock = io.StringIO(), Clock()
    view = LineView(Console(file=buf, force_terminal=False, width=200), "images", every_s=10.0, clock=clock)
    for t, done in ((0, 0), (3, 2), (9, 4), (10, 5), (15, 7), (17, 9)):
        clock.t = t
        view.update(snap(done, elapsed=float(t), failed=1 if done >= 7 else 0))
    view.close()
    lines = buf.getvalue().splitlines()
    assert lines == [
        "images 0/10 · 0 skipped · starting (loading models)",
        "images 5/10 · 0 failed · 0 skipped · 0.50 images/s · ETA 10s",
        "images 9/10 · 1 failed · 0 skipped · 0.53 images/s · ETA 2s",
    ]
    assert "\x1b" not in buf.getvalue()  # plain: no escape codes in a log file


def test_plain_close_does_not_repeat_the_last_line():
    buf = io.StringIO()
    view = LineView(Console(file=buf, force_terminal=False, width=200), "prompts", unit_name="tokens")
    view.update(snap(10, elapsed=5.0))
    view.update(snap(10, elapsed=6.0))
    view.close()
    assert buf.getvalue().splitlines() == ["prompts 10/10 · 0 failed · 0 skipped · 2.00 prompts/s · "
                                           "20 tokens/s · ETA 0s"]


def test_terminal_gets_a_bar_in_images():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=160)
    view = make_view(console, "images")
    assert isinstance(view, BarView)
    view.update(snap(0, elapsed=0.0, total=48))
    view.update(snap(12, elapsed=6.0, total=48, failed=1, skipped=4))
    view.close()
    text = ANSI.sub("", buf.getvalue())
    assert "━" in text  # the bar itself
    assert "16/48" in text and "1 failed" in text and "4 skipped" in text and "2.00 images/s" in text
    assert "ETA 16s" in text  # (440 - 120) planned steps left × 0.05 s per step
    assert isinstance(make_view(Console(file=io.StringIO(), force_terminal=False)), LineView)


def test_snapshot_adds_the_ledgers_skipped_rows_and_total_caps_at_limit():
    board = dict(total=10, done=2, failed=0, planned_rows=2, planned_units=4.0, done_planned_units=4.0,
                 done_units=4.0, elapsed_s=1.0)
    s = snapshot_of(board, {"new": 2, "done": 5, "duplicate": 1})
    assert s.skipped == 6 and s.finished == 8

    class Sh:
        def __init__(self, rows):
            self.rows = rows

    assert total_rows([Sh(10), Sh(7)], None) == 17 and total_rows([Sh(10), Sh(7)], 5) == 5
    assert total_rows([Sh(10), Sh(None)], None) is None


def test_quiet_ray_keeps_warnings_on_the_console_and_info_off(ray_local):
    quiet_ray(verbose=False)
    quiet_ray(verbose=False)  # idempotent: one filter per handler
    console = [h for h in logging.getLogger("ray.data").handlers if type(h).__name__ != "SessionFileHandler"]
    assert console
    for h in console:
        assert len(h.filters) >= 1
        rec = lambda lvl, msg: logging.LogRecord("ray.data", lvl, __file__, 1, msg, None, None)  # noqa: E731
        assert not h.filter(rec(logging.INFO, "Tasks: 0; Actors: 1 (running=0, restarting=0)"))
        assert not h.filter(rec(logging.WARNING, "Progress bars disabled. To enable, set ..."))
        assert h.filter(rec(logging.WARNING, "an operator is backpressured"))
        assert h.filter(rec(logging.ERROR, "a task failed"))


def test_image_run_reports_progress_in_images(ray_local, tiny_model, tmp_path):
    from test_images import settings, write_shards

    from pipelines.images import run

    write_shards(tmp_path / "in")
    buf = io.StringIO()
    view = LineView(Console(file=buf, force_terminal=False, width=200), "images", every_s=3600)
    s = run(settings(tiny_model), str(tmp_path / "in"), str(tmp_path / "out"), view=view)
    lines = buf.getvalue().splitlines()
    # 17 input rows: 13 ok, 3 failed on input, 1 repeated id (skipped); the last line is the final count.
    assert (s.ok, s.failed, s.duplicates) == (13, 3, 1)
    assert lines[-1].startswith("images 17/17 · 3 failed · 1 skipped · ")
    assert lines[-1].endswith("ETA 0s")
    # The run record of a real run: per step count, failures with reasons, fingerprints (fixed steps: no StepSaver).
    assert set(s.steps_breakdown) == {"2", "3"} and sum(v["images"] for v in s.steps_breakdown.values()) == 13
    assert abs(sum(v["unet_share"] for v in s.steps_breakdown.values()) - 1) < 1e-3
    assert all(v["mean_ms_per_image"] > 0 for v in s.steps_breakdown.values())
    assert len(s.failures) == 3 and all(f["error"] for f in s.failures)
    assert len(s.model_fingerprint) == 16 and s.stepsaver_fingerprint == ""

    # Resume: nothing reaches a model; the progress says so in images.
    buf2 = io.StringIO()
    view2 = LineView(Console(file=buf2, force_terminal=False, width=200), "images", every_s=3600)
    run(settings(tiny_model), str(tmp_path / "in"), str(tmp_path / "out"), view=view2)
    assert buf2.getvalue().splitlines()[-1].startswith("images 17/17 · 0 failed · 17 skipped")
    assert json.loads(next((tmp_path / "out" / "runs").glob("*.json")).read_text())["status"] == "ok"


def test_llm_run_reports_progress_in_prompts_and_tokens(ray_local, tmp_path):
    from test_llm import settings, write_shards

    from pipelines.llm import run

    write_shards(tmp_path / "in")
    buf = io.StringIO()
    view = LineView(Console(file=buf, force_terminal=False, width=200), "prompts", unit_name="tokens", every_s=3600)
    s = run(settings(), str(tmp_path / "in"), str(tmp_path / "out"), view=view)
    assert (s.ok, s.failed, s.duplicates) == (37, 2, 1)
    last = buf.getvalue().splitlines()[-1]
    # 40 input rows: 37 answered, 2 failed before routing, 1 repeated id.
    assert last.startswith("prompts 40/40 · 2 failed · 1 skipped · ") and " tokens/s · ETA 0s" in last
    assert re.search(r"· [1-9]\d* tokens/s", last)  # tokens were counted


def test_continuous_batching_reports_each_finished_image(ray_local, tiny_model, tmp_path):
    from test_images import settings, write_shards

    from pipelines.images import run

    write_shards(tmp_path / "in")
    buf = io.StringIO()
    view = LineView(Console(file=buf, force_terminal=False, width=200), "images", every_s=3600)
    s = run(settings(tiny_model, batching="continuous"), str(tmp_path / "in"), str(tmp_path / "out"), view=view)
    assert (s.ok, s.failed, s.duplicates) == (13, 3, 1)
    assert buf.getvalue().splitlines()[-1].startswith("images 17/17 · 3 failed · 1 skipped · ")

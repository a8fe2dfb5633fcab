"""Run history (``dynagen runs list|show``) on a local folder and on real SeaweedFS S3, and the run report's per
step count table, failures and fingerprints. Runs are recorded through the real sink (no Ray needed)."""

import json
import os
import stat

import pytest
from typer.testing import CliRunner

from dynagen.app.cli import app as cli
from dynagen.core.records import MAX_FAILURES, RunSummary
from dynagen.core.storage import Storage
from pipelines.history import HistoryError, find_run, list_runs, run_line
from pipelines.report import render_report, write_report
from pipelines.sinks import ImageSink, block_stats

PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8ffff3f0005fe02fe"
                    "a7d605c10000000049454e44ae426082")


def rows(steps, status=None, batch="b1", batch_size=2, ms=100.0):
    n = len(steps)
    status = status or ["ok"] * n
    return {"id": [f"r{i}-{s}" for i, s in enumerate(steps)], "prompt": ["p"] * n, "steps": steps, "status": status,
            "error": ["" if st == "ok" else "prompt is empty" for st in status], "unet_evals": [2 * s for s in steps],
            "batch_id": [batch] * n, "batch_size": [batch_size] * n, "latency_ms": [ms] * n, "image": [PNG] * n}


def record_run(store, run_id, started, stats, **fields):
    summary = RunSummary(run_id=run_id, source="in.jsonl", dest=store.root, started_at=started, **fields)
    sink = ImageSink(store, summary, batch_size=2)
    sink.on_write_start(None)
    s = sink.finish(stats)
    s.wall_s, s.images_per_s = 10.0, round(s.ok / 10.0, 3)
    write_report(store, s, sink.thumbs)
    store.put_bytes(f"runs/{run_id}.json", json.dumps(s.to_dict()).encode())
    return s


def fill(store):
    a = record_run(store, "20260101T000000Z-aaaaaa", "2026-01-01T00:00:00+00:00",
                   [block_stats(rows([10, 10], batch="b1", ms=200.0)),
                    block_stats(rows([30, 0], status=["ok", "failed"], batch="b2", batch_size=1, ms=300.0))],
                   model_fingerprint="0123456789abcdef", stepsaver_fingerprint="fedcba9876543210",
                   settings={"images": {"model": "/somewhere/models/tiny-sd", "steps": "auto"}})
    b = record_run(store, "20260102T000000Z-bbbbbb", "2026-01-02T00:00:00+00:00",
                   [block_stats(rows([20], batch="b3"))], settings={"images": {"steps": 20}})
    return a, b


def test_summary_gains_per_step_counts_failures_and_fingerprints(tmp_path):
    store = Storage(str(tmp_path / "d"))
    a, _ = fill(store)
    assert a.steps_breakdown == {
        "10": {"images": 2, "mean_ms_per_image": 100.0, "unet_share": 0.4},  # 40 of 100 evals; 200 ms / batch of 2
        "30": {"images": 1, "mean_ms_per_image": 300.0, "unet_share": 0.6},
    }
    assert a.failures == [{"id": "r1-0", "status": "failed", "error": "prompt is empty"}]
    html = store.get_bytes(f"runs/{a.run_id}.html").decode()
    for text in ("Per step count", "mean ms / image", "60.0%", "r1-0", "prompt is empty", "0123456789abcdef",
                 "fedcba9876543210", "model tiny-sd"):
        assert text in html, text
    assert "/somewhere" not in html  # named by fingerprint and folder name, never by a machine path


def test_failures_list_stops_at_fifty():
    many = block_stats(rows([0] * 80, status=["failed"] * 80))
    assert len(many["failures"]) == MAX_FAILURES
    s = RunSummary(run_id="r", source="s", dest="d", started_at="t", failed=80, failures=many["failures"])
    s.failure_reasons = {"prompt is empty": 80}
    assert f"First {MAX_FAILURES} of 80 failed rows" in render_report(s, {})


def test_list_and_find(tmp_path):
    store = Storage(str(tmp_path / "d"))
    fill(store)
    store.put_bytes("runs/garbage.json", b"{not json")  # a torn record does not hide the others
    runs = list_runs(store)
    assert [r["run_id"] for r in runs] == ["20260101T000000Z-aaaaaa", "20260102T000000Z-bbbbbb"]
    assert run_line(runs[0]) == ("20260101T000000Z-aaaaaa  2026-01-01 00:00:00  ok       3 ok / 1 failed / 0 skipped"
                                 "  0.30 images/s  steps 10×2 30×1")
    assert find_run(runs, None)["run_id"].endswith("bbbbbb")
    assert find_run(runs, "20260101")["run_id"].endswith("aaaaaa")
    with pytest.raises(HistoryError, match="ambiguous"):
        find_run(runs, "2026")
    with pytest.raises(HistoryError, match="not found"):
        find_run(runs, "nope")
    with pytest.raises(HistoryError, match="no runs"):
        find_run([], None)
    # A later rerun that skipped everything is not what "show me the run" means; named, it is still found.
    noop = {"run_id": "20260103T000000Z-cccccc", "status": "ok", "ok": 0, "failed": 0, "skipped": 4}
    assert find_run([*runs, noop], None)["run_id"].endswith("bbbbbb")
    assert find_run([*runs, noop], "20260103")["run_id"].endswith("cccccc")
    assert find_run([noop], None) is noop


def _check_cli(dest):
    runner = CliRunner()
    r = runner.invoke(cli, ["runs", "list", dest], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("20260101T000000Z-aaaaaa") and "steps 10×2 30×1" in lines[0]
    r = runner.invoke(cli, ["runs", "show", dest])
    assert r.exit_code == 0 and r.output.startswith("run: 20260102T000000Z-bbbbbb (images)")
    assert "StepSaver none (fixed steps)" in r.output
    r = runner.invoke(cli, ["runs", "show", dest, "20260101"])
    assert r.exit_code == 0, r.output
    for text in ("3 ok, 1 failed", "10 steps: 2 images, 100.0 ms/image, 40.0% of UNet evaluations",
                 "model sha256 0123456789abcdef, StepSaver sha256 fedcba9876543210", "failures: prompt is empty ×1",
                 "report: " + dest.rstrip("/") + "/runs/20260101T000000Z-aaaaaa.html"):
        assert text in r.output, text
    r = runner.invoke(cli, ["runs", "show", dest, "--json", "20260101"])
    assert json.loads(r.output)["steps_breakdown"]["30"]["images"] == 1
    r = runner.invoke(cli, ["runs", "show", dest, "zzz"])
    assert r.exit_code == 1 and "not found" in r.output


def _browser(tmp_path):
    """A BROWSER command that records what it was asked to open (webbrowser honours $BROWSER)."""
    log = tmp_path / "opened.txt"
    script = tmp_path / "browser.sh"
    script.write_text(f"#!/bin/sh\necho \"$1\" >> {log}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return f"{script} %s", log


def test_runs_list_show_open_local(tmp_path, monkeypatch):
    dest = str(tmp_path / "d")
    fill(Storage(dest))
    _check_cli(dest)
    cmd, log = _browser(tmp_path)
    monkeypatch.setenv("BROWSER", cmd)
    import webbrowser

    monkeypatch.setattr(webbrowser, "_tryorder", None)  # re-read $BROWSER in this process
    r = CliRunner().invoke(cli, ["runs", "show", dest, "--open"])
    assert r.exit_code == 0, r.output
    assert log.read_text().strip() == (tmp_path / "d" / "runs" / "20260102T000000Z-bbbbbb.html").as_uri()


def test_runs_list_show_open_s3(s3, tmp_path, monkeypatch):
    dest = f"s3://{s3.bucket}/history"
    fill(Storage(dest))
    _check_cli(dest)
    cmd, log = _browser(tmp_path)
    monkeypatch.setenv("BROWSER", cmd)
    import webbrowser

    monkeypatch.setattr(webbrowser, "_tryorder", None)
    r = CliRunner().invoke(cli, ["runs", "show", dest, "20260101", "--open"])
    assert r.exit_code == 0, r.output
    opened = log.read_text().strip()  # a local copy of the S3 report
    assert opened.startswith("file://") and opened.endswith("20260101T000000Z-aaaaaa.html")
    assert "Per step count" in open(opened[len("file://"):]).read()


def test_runs_on_a_destination_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(cli, ["runs", "list", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "no runs recorded" in r.output
    assert os.listdir(tmp_path / "empty") == []

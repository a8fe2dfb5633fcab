"""End-to-end image pipeline on real Ray (+ real SeaweedFS S3), tiny random model, fixed small step counts."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dynagen.core.settings import load_settings
from dynagen.core.storage import Storage
from pipelines.common import RunError
from pipelines.images import run
from pipelines.sinks import read_metadata

PROMPTS = [f"{n} {c} {s}" for n in ("one", "two") for c in ("red", "blue", "green") for s in ("circles", "squares")]


def settings(tiny_model, **kw):
    over = {"images.model": tiny_model, "images.steps": 2, "images.batch_size": 4, "images.cpus_per_actor": 0.5}
    over.update({f"images.{k}": v for k, v in kw.items()})
    return load_settings(None, over, env={})[0]


def write_shards(d: Path) -> list[str]:
    """Mixed formats, per-row step overrides and a few bad rows."""
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt": PROMPTS[:6], "steps": [2, 3, 2, 3, 2, 3]}), d / "a.parquet")
    lines = [json.dumps({"prompt": p, "id": f"j{i}", "seed": i}) for i, p in enumerate(PROMPTS[6:])]
    lines += ['{"prompt": ""}', "{broken", json.dumps({"prompt": "dup of j0", "id": "j0"})]
    (d / "b.jsonl").write_text("\n".join(lines) + "\n")
    (d / "c.csv").write_text("prompt,seed\nthree red circles,5\nthree blue squares,notanumber\n")
    return [str(d / n) for n in ("a.parquet", "b.jsonl", "c.csv")]


def test_run_local_mixed_shards_then_resume(ray_local, tiny_model, tmp_path):
    write_shards(tmp_path / "in")
    out = tmp_path / "out"
    s = run(settings(tiny_model), str(tmp_path / "in"), str(out))
    # 12 good rows + 1 good csv row; failed: empty, broken json, bad seed; duplicate id j0 generated once
    assert (s.ok, s.failed, s.duplicates, s.skipped) == (13, 3, 1, 0)
    meta = read_metadata(Storage(str(out))).to_pylist()
    assert len(meta) == 16 and len({m["id"] for m in meta}) == 16
    for m in meta:
        if m["status"] == "ok":
            assert Path(m["image_uri"]).is_file() and m["batch_size"] >= 1
        else:
            assert m["image_uri"] is None and m["error"]
    assert {m["steps"] for m in meta if m["status"] == "ok"} == {2, 3}
    # Batches hold one step count; UNet evaluations measured = Σ steps × 2 (CFG)
    by_batch = {}
    for m in meta:
        if m["status"] == "ok":
            by_batch.setdefault(m["batch_id"], set()).add(m["steps"])
    assert all(len(v) == 1 for v in by_batch.values())
    assert s.unet_evals == 2 * s.denoising_steps == 2 * sum(m["steps"] for m in meta if m["status"] == "ok")
    summary = json.loads((out / "runs" / f"{s.run_id}.json").read_text())
    assert summary["status"] == "ok"  # the sink's start record ("running") was replaced when it completed
    assert summary["ok"] == 13 and summary["steps_histogram"] == {"2": 10, "3": 3}
    assert "secret" not in json.dumps(summary["settings"]["storage"])
    assert "<img src='data:image/png;base64," in (out / "runs" / f"{s.run_id}.html").read_text()

    # Rerun = resume: nothing generated again, no duplicate rows.
    s2 = run(settings(tiny_model), str(tmp_path / "in"), str(out))
    assert (s2.ok, s2.failed, s2.skipped) == (0, 0, 17)  # 16 ids + the repeated j0 row, all done earlier
    assert len(read_metadata(Storage(str(out)))) == 16


def test_a_rerun_with_nothing_new_starts_no_ray(ray_local, tiny_model, tmp_path):
    """A finished run's rerun reads its input and the destination on the driver and ends there: a fresh process
    that runs it never starts Ray (the demo's rerun took 15 s of Ray and model start for zero rows)."""
    import subprocess
    import sys

    write_shards(tmp_path / "in")
    out = tmp_path / "out"
    run(settings(tiny_model), str(tmp_path / "in"), str(out))
    code = (
        "import json, sys, ray\n"
        "from dynagen.core.settings import load_settings\n"
        "from pipelines.images import run\n"
        "s = run(load_settings(None, {'images.model': sys.argv[1], 'images.steps': 2}, env={})[0], sys.argv[2], "
        "sys.argv[3])\n"
        "print(json.dumps([s.ok, s.failed, s.skipped, s.duplicates, ray.is_initialized()]))\n"
    )
    p = subprocess.run([sys.executable, "-c", code, tiny_model, str(tmp_path / "in"), str(out)], capture_output=True,
                       text=True, timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.strip().splitlines()[-1]) == [0, 0, 17, 0, False]  # as the in-Ray resume counts it
    assert len(read_metadata(Storage(str(out)))) == 16 and len(list((out / "runs").glob("*.json"))) == 2


def test_report_says_why_there_are_no_predictions(tmp_path):
    from dynagen.core.records import RunSummary
    from pipelines.report import render_report

    auto = settings("m", steps="auto").model_dump(mode="json")
    html = render_report(RunSummary(run_id="r", source="s", dest="d", started_at="", skipped=4, settings=auto), {})
    assert "fixed steps run" not in html and "nothing new to generate" in html
    fixed = settings("m").model_dump(mode="json")
    assert "fixed steps run" in render_report(RunSummary(run_id="r", source="s", dest="d", started_at="", ok=1,
                                                         settings=fixed), {})
    sample = render_report(RunSummary(run_id="r", source="s", dest="d", started_at="", ok=9,
                                      steps_histogram={"20": 9}), {"20": [("a", "p", b"")] * 6})
    assert "a sample: 6 of 9 images" in sample


def test_every_bad_shard_is_named(tiny_model, tmp_path):
    from pipelines.common import check_inputs

    d = tmp_path / "in"
    write_shards(d)
    (d / "y.jsonl").write_bytes(b"\xff\xfe not utf-8")
    (d / "z.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(RunError, match=r"^2 bad shards .*y\.jsonl: not valid UTF-8.*; .*z\.parquet: cannot parse"):
        check_inputs(settings(tiny_model), str(d))


def test_bad_shard_stops_before_generating_or_is_skipped(ray_local, tiny_model, tmp_path):
    d = tmp_path / "in"
    write_shards(d)
    (d / "z.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(RunError, match=r"z\.parquet.*cannot parse parquet"):
        run(settings(tiny_model), str(d), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused at start: not even an empty DEST folder
    s = run(settings(tiny_model, skip_bad_shards=True, limit=4), str(d / "a.parquet"), str(tmp_path / "out2"))
    assert s.ok == 4  # --limit
    s = run(settings(tiny_model, skip_bad_shards=True), str(d), str(tmp_path / "out"))
    assert s.ok == 13 and [b["shard"] for b in s.bad_shards] == [str(d / "z.parquet")]


def test_missing_stepsaver_and_model_fail_fast(ray_local, tiny_model, tmp_path):
    write_shards(tmp_path / "in")
    with pytest.raises(RunError, match="StepSaver model not found"):
        run(settings(tiny_model, steps="auto", stepsaver=str(tmp_path / "none")), str(tmp_path / "in"), str(tmp_path / "o"))
    with pytest.raises(RunError, match="model folder not found"):
        run(settings(str(tmp_path / "nomodel")), str(tmp_path / "in"), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    (tmp_path / "notmodel").mkdir()  # a folder, but no diffusers pipeline: refused by the full check before Ray
    (tmp_path / "notmodel" / "config.json").write_text("{}")
    with pytest.raises(RunError, match="no model_index.json"):
        run(settings(str(tmp_path / "notmodel")), str(tmp_path / "in"), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_a_run_that_stops_mid_way_still_writes_its_summary(ray_local, tiny_model, tmp_path):
    """The Datasink's failure hook: a StepSaver folder that exists but cannot load fails inside Ray (after the fast
    checks); the run raises one line and leaves runs/<id>.json saying it failed and why."""
    write_shards(tmp_path / "in")
    broken = tmp_path / "stepsaver"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="run r-broken failed: ArtifactError: .*rerun the same command"):
        run(settings(tiny_model, steps="auto", stepsaver=str(broken)), str(tmp_path / "in"), str(tmp_path / "o"),
            run_id="r-broken")
    summary = json.loads((tmp_path / "o" / "runs" / "r-broken.json").read_text())
    assert summary["status"] == "failed" and "ArtifactError" in summary["error"] and "\n" not in summary["error"]
    assert summary["ok"] == 0 and summary["finished_at"]


def test_sink_start_record_and_report_after_the_sink(tmp_path):
    """on_write_start (driver, before any write task) claims the run in the destination; the report is the
    pipeline's job after the sink completed: the sink itself never writes HTML."""
    from dynagen.core.records import RunSummary
    from pipelines.report import write_report
    from pipelines.sinks import ImageSink

    store = Storage(str(tmp_path / "d"))
    sink = ImageSink(store, RunSummary(run_id="r1", source="in", dest=store.root, started_at="t0"), batch_size=2)
    sink.on_write_start(None)
    assert json.loads(store.get_bytes("runs/r1.json"))["status"] == "running"
    summary = sink.finish([])  # a run with nothing left to do (all resumed) completes too
    assert json.loads(store.get_bytes("runs/r1.json"))["status"] == "ok" == summary.status
    assert store.list("runs") == ["runs/r1.json"]
    write_report(store, summary, sink.thumbs)
    assert "dynagen run r1" in store.get_bytes("runs/r1.html").decode()


def test_s3_in_and_out(ray_local, tiny_model, s3, tmp_path):
    src_store = Storage(f"s3://{s3.bucket}/inputs")
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"prompt": PROMPTS[:5], "id": [f"s{i}" for i in range(5)]}), buf)
    src_store.put_bytes("part-0.parquet", buf.getvalue().to_pybytes())
    src_store.put_bytes("part-1.jsonl", b'{"prompt": "a red circle", "id": "s9"}\n')
    dest = f"s3://{s3.bucket}/runs/test1"
    s = run(settings(tiny_model), f"s3://{s3.bucket}/inputs", dest)
    assert (s.ok, s.failed) == (6, 0)
    store = Storage(dest)
    assert sorted(store.list("images")) == [f"images/s{i}.png" for i in (0, 1, 2, 3, 4, 9)]
    assert store.get_bytes("images/s0.png")[:4] == b"\x89PNG"
    meta = read_metadata(store)
    assert meta.num_rows == 6 and set(meta["image_uri"].to_pylist()) == {f"{dest}/images/s{i}.png" for i in (0, 1, 2, 3, 4, 9)}
    assert json.loads(store.get_bytes(f"runs/{s.run_id}.json"))["ok"] == 6
    assert run(settings(tiny_model), f"s3://{s3.bucket}/inputs", dest).skipped == 6


def test_s3_unreachable_or_missing_bucket_fails_fast(ray_local, tiny_model, s3, tmp_path, monkeypatch):
    write_shards(tmp_path / "in")
    with pytest.raises(RunError, match="bucket 'nosuchbucket' does not exist"):
        run(settings(tiny_model), str(tmp_path / "in"), "s3://nosuchbucket/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(RunError, match="cannot reach S3 endpoint http://127.0.0.1:9"):
        run(settings(tiny_model), str(tmp_path / "in"), "s3://dynagen/x")


def test_parquet_input_beside_an_actor_holding_most_cpus(ray_local, tiny_model, tmp_path):
    """Regression: Ray 2.60's V2 Parquet reader wanted a whole CPU for listing files and hung next to an actor
    holding 1.5 of the 2 CPUs. The run happens in a thread so a hang fails the test instead of the suite."""
    import threading

    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"prompt": PROMPTS[:4]}), d / "a.parquet")
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(s=run(settings(tiny_model, cpus_per_actor=1.5), str(d), str(tmp_path / "out"))),
                         daemon=True)
    t.start()
    t.join(timeout=300)
    assert not t.is_alive(), "image run on a Parquet shard did not finish (read stage starved of CPUs)"
    assert result["s"].ok == 4


@pytest.mark.parametrize("batching", ["grouped", "continuous"])
def test_adaptive_steps_run_end_to_end_with_the_step_count_as_cap(ray_local, tiny_model, tmp_path, batching):
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS[:4]) + "\n")
    s = run(settings(tiny_model, steps=6, adaptive=True, adaptive_tol=0.5, batching=batching),
            str(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    meta = read_metadata(Storage(str(tmp_path / "out"))).to_pylist()
    assert s.ok == 4 and all(m["status"] == "ok" for m in meta)
    assert all(m["planned_steps"] == 6 and 1 <= m["steps"] <= 6 for m in meta)
    assert s.unet_evals == 2 * sum(m["steps"] for m in meta)  # evals follow the steps each image really took


def test_early_stopping_runs_end_to_end_under_continuous_batching(ray_local, tiny_model, tmp_path):
    """A huge rate threshold stops every image at its first check after min_steps: each row records the steps it ran,
    its budget and that it stopped early, and the evaluations follow the steps run."""
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in PROMPTS[:4]) + "\n")
    s = run(settings(tiny_model, steps=6, batching="continuous", early_stop=True, early_stop_signal="rate",
                     early_stop_threshold=1e9, early_stop_min_steps=2, early_stop_interval=1),
            str(tmp_path / "in.jsonl"), str(tmp_path / "out"))
    meta = read_metadata(Storage(str(tmp_path / "out"))).to_pylist()
    assert s.ok == 4 and all(m["planned_steps"] == 6 and m["steps"] == 2 and m["stopped_early"] for m in meta)
    assert s.unet_evals == 2 * 2 * 4


def test_a_zero_or_huge_step_count_is_a_failed_row_under_continuous_batching(ray_local, tiny_model, tmp_path):
    pq.write_table(pa.table({"prompt": PROMPTS[:4], "steps": [2, 0, 10**6, 3]}), tmp_path / "in.parquet")
    s = run(settings(tiny_model, batching="continuous"), str(tmp_path / "in.parquet"), str(tmp_path / "out"))
    meta = {m["prompt"]: m for m in read_metadata(Storage(str(tmp_path / "out"))).to_pylist()}
    assert s.ok == 2 and s.failed == 2
    assert [meta[p]["status"] for p in PROMPTS[:4]] == ["ok", "failed", "failed", "ok"]
    assert all("bad steps" in meta[p]["error"] for p in PROMPTS[1:3])


def test_continuous_batching_runs_mixed_step_counts_in_full_active_sets(ray_local, tiny_model, tmp_path):
    """Mixed per-row step counts through one active set: each image runs its own count, the same image as grouped
    batching gives (same seed, same count), and the set is fuller than one-count batches of the same rows."""
    steps = [2, 5, 3, 2, 4, 5, 3, 2]
    pq.write_table(pa.table({"prompt": PROMPTS[:8], "steps": steps, "seed": list(range(8))}), tmp_path / "in.parquet")
    runs = {}
    for mode in ("grouped", "continuous"):
        s = run(settings(tiny_model, batching=mode), str(tmp_path / "in.parquet"), str(tmp_path / mode))
        meta = {m["prompt"]: m for m in read_metadata(Storage(str(tmp_path / mode))).to_pylist()}
        runs[mode] = (s, meta)
        assert s.ok == 8 and [meta[p]["steps"] for p in PROMPTS[:8]] == steps
        assert s.unet_evals == 2 * sum(steps)
    (g, gmeta), (c, cmeta) = runs["grouped"], runs["continuous"]
    for p in PROMPTS[:8]:
        a = np.asarray(Image.open(gmeta[p]["image_uri"]), dtype=int)
        b = np.asarray(Image.open(cmeta[p]["image_uri"]), dtype=int)
        assert np.abs(a - b).max() <= 1, p
    assert c.mean_batch_fill > g.mean_batch_fill
    with pytest.raises(ValueError, match="two per-sample rules"):
        settings(tiny_model, batching="continuous", early_stop=True, adaptive=True)

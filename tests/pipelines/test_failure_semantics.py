"""What a rerun does with each outcome: input failures are final, runtime errors are retried, and the destination's
totals (what a night is judged on) count every run, each id by its latest outcome. Real sinks on a real folder."""

import pytest

from dynagen.core.errors import runtime_error
from dynagen.core.records import ERROR, FAILED, OK, RunSummary, outcomes
from dynagen.core.storage import Storage
from pipelines.audit import audit
from pipelines.sinks import ImageSink, destination_totals, done_ids


def _png():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return buf.getvalue()


def _rows(ids, statuses, errors):
    n = len(ids)
    return {"id": ids, "prompt": ["p"] * n, "negative_prompt": [""] * n, "seed": [1] * n, "steps": [4] * n,
            "status": statuses, "error": errors, "image": [_png() if s == OK else b"" for s in statuses],
            "unet_evals": [8] * n, "batch_id": ["b"] * n, "batch_size": [n] * n, "source": ["s"] * n}


def _sink(store, run_id):
    return ImageSink(store, RunSummary(run_id=run_id, source="s", dest=store.root, started_at=""), batch_size=4)


def test_outcomes_rank_a_retry_over_its_earlier_error():
    assert outcomes(["a", "a", "b", "c", "c"], [ERROR, OK, ERROR, ERROR, FAILED]) == {"a": OK, "b": ERROR, "c": FAILED}
    assert outcomes(["a", "a"], [OK, ERROR]) == {"a": OK}  # order does not matter


def test_runtime_error_is_one_line():
    msg = runtime_error(RuntimeError("CUDA out of memory\nTraceback ..."))
    assert msg == "generation failed: RuntimeError: CUDA out of memory"
    assert len(runtime_error(ValueError("x" * 2000))) == 500


def test_rerun_retries_runtime_errors_but_not_input_failures(tmp_path):
    store = Storage(str(tmp_path / "out"))
    first = _sink(store, "run1")
    first.write_rows(_rows(["ok1", "bad", "err"], [OK, FAILED, ERROR], ["", "empty prompt", runtime_error(OSError("disk"))]))
    s1 = first.finish([first.write_rows(_rows([], [], []))])
    assert done_ids(store) == {"ok1", "bad"}  # the runtime error is not done: the rerun takes it again
    assert (s1.dest_ok, s1.dest_failed) == (1, 2)
    rep = audit(store, {"ok1", "bad", "err"})
    assert rep.clean and (rep.ok, rep.failed) == (1, 2) and rep.retryable == ["err"]

    second = _sink(store, "run2")  # the rerun generates the retried row
    stats = second.write_rows(_rows(["err"], [OK], [""]))
    s2 = second.finish([stats])
    assert done_ids(store) == {"ok1", "bad", "err"} and destination_totals(store) == (2, 1)
    assert (s2.ok, s2.failed, s2.dest_ok, s2.dest_failed) == (1, 0, 2, 1)
    rep = audit(store, {"ok1", "bad", "err"})
    assert rep.clean and rep.rows == 4 and (rep.ok, rep.failed) == (2, 1) and rep.retryable == []


def test_two_final_rows_for_one_id_are_still_a_duplicate(tmp_path):
    store = Storage(str(tmp_path / "out"))
    _sink(store, "run1").write_rows(_rows(["a"], [OK], [""]))
    _sink(store, "run2").write_rows(_rows(["a"], [FAILED], ["empty prompt"]))
    assert audit(store).duplicated == ["a"]


def test_summary_counts_retryable_rows(tmp_path):
    store = Storage(str(tmp_path / "out"))
    sink = _sink(store, "run1")
    stats = sink.write_rows(_rows(["a", "b", "c"], [ERROR, ERROR, FAILED], ["generation failed: X", "generation failed: X",
                                                                           "empty prompt"]))
    s = sink.finish([stats])
    assert (s.ok, s.failed, s.retryable) == (0, 3, 2)


def test_diffusion_core_marks_a_model_failure_retryable(tiny_model, monkeypatch):
    from actors.diffusion import DiffusionCore

    core = DiffusionCore(tiny_model, "ddim", batch_size=2, num_threads=1)

    def boom(*a, **k):
        raise RuntimeError("out of memory\ndetails")

    monkeypatch.setattr(core, "generate_with_steps", boom)
    rows = {"id": ["a", "b"], "prompt": ["x", "y"], "negative_prompt": ["", ""], "seed": [1, 2], "steps": [4, 4],
            "status": [OK, FAILED], "error": ["", "empty prompt"]}
    out = core.run(rows)
    assert out["status"] == [ERROR, FAILED]
    assert out["error"] == ["generation failed: RuntimeError: out of memory", "empty prompt"]


@pytest.mark.parametrize("status", [OK, FAILED])
def test_llm_done_ids_keep_final_rows_only(tmp_path, status):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dynagen.core.records import response_schema
    from pipelines.sinks import response_done_ids, response_totals

    store = Storage(str(tmp_path / "out"))
    (tmp_path / "out" / "responses").mkdir(parents=True)
    full = response_schema()
    cols = {f.name: [None, None] for f in full}
    cols.update(id=["x", "y"], status=[status, ERROR])
    pq.write_table(pa.Table.from_pydict(cols, schema=full), tmp_path / "out" / "responses" / "part-0.parquet")
    assert response_done_ids(store) == {"x"}
    assert response_totals(store) == ((1, 1) if status == OK else (0, 2))

"""End-to-end LLM pipeline on real Ray, the embedded tiny models, and a real SeaweedFS S3 for the sink."""

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dynagen.core.settings import SettingsError, load_settings
from dynagen.core.storage import Storage
from pipelines.common import RunError
from dynagen.core.records import RESPONSE_COLUMNS
from pipelines.llm import run
from pipelines.sinks import read_responses

REPO = Path(__file__).resolve().parents[2]
QUESTIONS = [f"Question {i}: what is {i} plus {i + 1}? Answer:" for i in range(36)]


def settings(**kw):
    over = {"llm.router": "random", "llm.max_new_tokens": 3, "llm.batch_size": 8, "llm.cpus_per_actor": 0.5,
            "llm.large_share": 0.5, "llm.max_prompt_tokens": 48}
    over.update({f"llm.{k}": v for k, v in kw.items()})
    return load_settings(None, over, env={})[0]


def write_shards(d: Path) -> None:
    """Two Parquet shards (two blocks, so both pools see work) and a JSONL shard with bad rows."""
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"prompt": QUESTIONS[:18]}), d / "a.parquet")
    pq.write_table(pa.table({"prompt": QUESTIONS[18:], "id": [f"q{i}" for i in range(18)]}), d / "b.parquet")
    lines = [json.dumps({"prompt": ""}), "{broken", json.dumps({"prompt": "word " * 200, "id": "long"}),
             json.dumps({"prompt": "dup", "id": "q0"})]
    (d / "c.jsonl").write_text("\n".join(lines) + "\n")


def test_run_to_s3_routes_both_pools_then_resumes(ray_local, s3, tmp_path):
    write_shards(tmp_path / "in")
    dest = f"s3://{s3.bucket}/llm/run1"
    s = run(settings(), str(tmp_path / "in"), dest)
    # 36 questions + the long prompt answered; empty prompt and broken line failed; q0 repeated once
    assert (s.ok, s.failed, s.duplicates, s.skipped) == (37, 2, 1, 0)
    assert s.routes["small"] + s.routes["large"] == 37 and s.routes["none"] == 2
    assert s.routes["small"] > 0 and s.routes["large"] > 0
    assert s.realised_large_share == pytest.approx(s.routes["large"] / 37, abs=1e-3)

    rows = read_responses(Storage(dest)).to_pylist()
    assert len(rows) == 39 and len({r["id"] for r in rows}) == 39
    assert set(rows[0]) == set(RESPONSE_COLUMNS)
    for r in rows:
        if r["status"] == "ok":
            assert r["model"].endswith(f"llm-{r['route']}") and isinstance(r["response"], str)
            assert 0 < r["completion_tokens"] <= 3 and 0 < r["prompt_tokens"] <= 48 and r["latency_ms"] > 0
            assert 0.0 <= r["router_score"] <= 1.0 and r["run_id"] == s.run_id
        else:
            assert r["route"] is None and r["response"] is None and r["error"]
    long = next(r for r in rows if r["id"] == "long")
    assert long["truncated"] and long["prompt_tokens"] == 48 and "truncated" in long["error"]

    summary = json.loads(Storage(dest).get_bytes(f"runs/{s.run_id}.json"))
    assert summary["status"] == "ok"  # the sink's start record ("running") was replaced when it completed
    assert summary["routes"] == s.routes and summary["pools"]["large"]["tokens_per_s"] > 0
    assert summary["pools"]["small"]["completion_tokens"] == sum(r["completion_tokens"] for r in rows if r["route"] == "small")
    assert summary["pools"]["small"]["truncated"] + summary["pools"]["large"]["truncated"] == 1
    assert "secret" not in json.dumps(summary["settings"]["storage"])

    # Rerun = resume: nothing answered again, no duplicate rows.
    s2 = run(settings(), str(tmp_path / "in"), dest)
    assert (s2.ok, s2.failed, s2.skipped) == (0, 0, 40)
    assert len(read_responses(Storage(dest))) == 39


def _numbered_prompt_shards(d, n: int):
    """``n`` distinct prompts in 3 Parquet shards (3 router batches)."""
    d.mkdir()
    prompts = [f"Prompt number {i}: summarise topic {i % 37}." for i in range(n)]
    for k in range(3):
        pq.write_table(pa.table({"prompt": prompts[k::3]}), d / f"p{k}.parquet")
    return d


def test_realised_share_on_a_large_batch_is_within_5_points(ray_local, tmp_path):
    d = _numbered_prompt_shards(tmp_path / "in", 600)
    s = run(settings(large_share=0.3, max_new_tokens=1, share_mode="calibrated"), str(d), str(tmp_path / "out"))
    assert s.ok == 600 and abs(s.realised_large_share - 0.3) <= 0.05


def test_job_share_mode_sends_exactly_the_target_share(ray_local, tmp_path):
    """The batch default: every row scored first, then this job's top share goes large (3 shards, 3 router batches)."""
    d = _numbered_prompt_shards(tmp_path / "in", 301)
    s = run(settings(large_share=0.3, max_new_tokens=1), str(d), str(tmp_path / "out"))
    assert s.share_mode == "job" and s.ok == 301 and s.routes["large"] == 90  # round(0.3 × 301)
    rows = read_responses(Storage(str(tmp_path / "out"))).to_pylist()
    large = [r["router_score"] for r in rows if r["route"] == "large"]
    assert min(large) >= max(r["router_score"] for r in rows if r["route"] == "small") and min(large) == s.threshold
    report = (tmp_path / "out" / "runs" / f"{s.run_id}.md").read_text()  # the page a person reads
    assert "large share 29.9% (target 30%)" in report and "## Answers (200 of 301)" in report
    assert sum(line.startswith("| ") and " | large | " in line for line in report.splitlines()) >= 50


@pytest.mark.slow  # ~1.5 min on a busy 2-core box: the router actor loads the real MiniLM encoder
def test_learned_router_in_the_pipeline(ray_local, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    pq.write_table(pa.table({"prompt": QUESTIONS[:12]}), d / "a.parquet")
    s = run(settings(router="learned", share_mode="per_batch", large_share=0.25), str(d), str(tmp_path / "out"))
    assert s.ok == 12 and s.routes["large"] == 3
    scores = [r["router_score"] for r in read_responses(Storage(str(tmp_path / "out"))).to_pylist()]
    assert all(0.0 <= v <= 1.0 for v in scores) and len(set(scores)) > 1


def test_bad_inputs_fail_fast_before_answering(ray_local, tmp_path):
    write_shards(tmp_path / "in")
    with pytest.raises(SettingsError, match="large_share"):
        settings(large_share=1.5)
    broken = tmp_path / "broken-model"
    shutil.copytree(REPO / "models" / "llm-large", broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(RunError, match=r"large model: .*no weights"):
        run(settings(large_model=str(broken)), str(tmp_path / "in"), str(tmp_path / "out"))
    with pytest.raises(RunError, match="router artifact not found"):
        run(settings(router="learned", router_path=str(tmp_path / "nope")), str(tmp_path / "in"), str(tmp_path / "out"))
    with pytest.raises(RunError, match=r"^large model: gguf:\S+: GGUF file not found$"):
        run(settings(large_model=f"gguf:{tmp_path / 'missing.gguf'}"), str(tmp_path / "in"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused at start: not even an empty DEST folder
    # Share 0 never loads the large model, so a broken large model does not matter then.
    s = run(settings(large_model=str(broken), large_share=0.0), str(tmp_path / "in"), str(tmp_path / "out"))
    assert s.routes["large"] == 0 and s.ok == 37 and "large" not in s.pools


def test_a_share_far_off_its_target_is_named():
    from dynagen.core.records import LLMRunSummary
    from pipelines.llm import share_warning

    def summary(large, small, target=0.3):
        return LLMRunSummary(run_id="r", source="s", dest="d", started_at="", router="learned",
                             target_large_share=target, share_mode="calibrated", routes={"small": small, "large": large},
                             realised_large_share=large / (large + small))

    warning = share_warning(summary(0, 10))  # the run: 0 of 10 for a 30% target, silently
    assert warning.startswith("realised large share 0.0% (0 of 10) is 30.0 points off the target 30%")
    assert share_warning(summary(3, 7)) is None and share_warning(summary(26, 74)) is None

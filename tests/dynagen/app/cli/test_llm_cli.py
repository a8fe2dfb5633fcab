"""CLI layer for the LLM commands: dynagen run llm, dynagen route score, dynagen train router."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from dynagen.app.cli import app

runner = CliRunner()


def test_help_lists_the_llm_commands():
    for args, words in ((["run", "llm", "--help"], ["--large-share", "--small-model", "--max-new-tokens", "resumes"]),
                        (["route", "score", "--help"], ["--prompts", "--out"]),
                        (["train", "router", "--help"], ["--data", "--out"])):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        for w in words:
            assert w in r.output


def test_large_share_outside_unit_interval_is_a_usage_error(tmp_path):
    for bad in ("1.5", "-0.1"):
        r = runner.invoke(app, ["run", "llm", "--prompts", str(tmp_path), "--out", str(tmp_path / "o"), "--large-share", bad])
        assert r.exit_code == 2 and "[0, 1]" in r.output
    assert not (tmp_path / "o").exists()


def test_route_score_writes_a_score_per_row(tmp_path):
    pq.write_table(pa.table({"prompt": ["What is 2+2?", "", "Name a prime number."], "id": ["a", "b", "c"]}),
                   tmp_path / "p.parquet")
    out = tmp_path / "scores" / "s.parquet"
    r = runner.invoke(app, ["route", "score", "--prompts", str(tmp_path / "p.parquet"), "--out", str(out), "--router", "random"])
    assert r.exit_code == 0, r.output
    rows = pq.read_table(out).to_pylist()
    assert [x["id"] for x in rows] == ["a", "b", "c"]
    assert 0 <= rows[0]["score"] <= 1 and rows[1]["score"] is None and rows[1]["status"] == "failed"
    assert json.loads(pq.read_schema(out).metadata[b"dynagen.router"])["name"] == "random"
    r = runner.invoke(app, ["route", "score", "--prompts", str(tmp_path / "none.parquet"), "--out", str(out)])
    assert r.exit_code == 2 and "error:" in r.output


def test_train_router_with_missing_labels_fails_cleanly(tmp_path):
    r = runner.invoke(app, ["train", "router", "--data", str(tmp_path / "missing.parquet"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "not found" in r.output and not (tmp_path / "r").exists()


def test_run_llm_end_to_end(ray_local, tmp_path):
    pq.write_table(pa.table({"prompt": [f"question {i}?" for i in range(10)]}), tmp_path / "p.parquet")
    args = ["run", "llm", "--prompts", str(tmp_path / "p.parquet"), "--out", str(tmp_path / "out"), "--router", "random",
            "--large-share", "0.5", "--max-new-tokens", "2"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "10 ok" in r.output and "large share" in r.output
    assert sum(pq.read_table(f).num_rows for f in (tmp_path / "out" / "responses").glob("*.parquet")) == 10

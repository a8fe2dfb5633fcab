import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from dynagen.core.records import MAX_SEED
from dynagen.core.sources import ShardError, check_shard, list_shards, normalize_batch, normalize_row

FS = pafs.LocalFileSystem()


def test_numpy_and_float_numbers_accepted():
    import numpy as np

    row = normalize_row({"prompt": "x", "seed": np.int64(3), "steps": np.int32(12)}, 10)
    assert (row["seed"], row["steps"], row["status"]) == (3, 12, "ok")
    assert normalize_row({"prompt": "x", "seed": float("nan")}, 10)["status"] == "ok"
    assert normalize_row({"prompt": "x", "seed": 1.5}, 10)["status"] == "failed"


def test_normalize_derives_stable_id_and_seed():
    a = normalize_row({"prompt": "a red circle"}, 100)
    b = normalize_row({"prompt": "a red circle"}, 100)
    c = normalize_row({"prompt": "a blue circle"}, 100)
    assert a == b and a["id"] != c["id"] and a["status"] == "ok" and 0 <= a["seed"] <= MAX_SEED
    assert normalize_row({"prompt": "x", "id": "p-1", "seed": "7", "steps": 12.0}, 100) | {} == {
        "id": "p-1", "prompt": "x", "negative_prompt": "", "seed": 7, "steps": 12, "status": "ok", "error": ""}


@pytest.mark.parametrize(
    "raw, reason",
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   \n"}, "prompt is whitespace-only"),
        ({"prompt": 42}, "prompt must be a string, got int"),
        ({"prompt": None}, "missing prompt"),
        ({"prompt": "x" * 101}, "too long"),
        ({"prompt": "a\x00b"}, "NUL"),
        ({"prompt": "ok", "seed": -1}, "bad seed"),
        ({"prompt": "ok", "seed": "abc"}, "bad seed"),
        ({"prompt": "ok", "seed": 2**40}, "bad seed"),
        ({"prompt": "ok", "steps": "many"}, "bad steps"),
        ({"prompt": "ok", "steps": 0}, "bad steps"),
        ({"prompt": "ok", "steps": 10**6}, "bad steps"),
        ({"prompt": "ok", "id": "../../etc/passwd"}, "invalid id"),
        ({"prompt": "ok", "id": "%2e%2e"}, "invalid id"),
        ({"prompt": "ok", "id": "/abs"}, "invalid id"),
    ],
)
def test_bad_rows_fail_with_reason(raw, reason):
    row = normalize_row(raw, 100)
    assert row["status"] == "failed" and reason in row["error"]
    assert "/" not in row["id"] and ".." not in row["id"] and len(row["prompt"]) <= 100


def test_jsonl_batch_bad_line_is_a_failed_row():
    out = normalize_batch({"text": ['{"prompt": "a"}', "{oops", "[1]"], "path": ["f", "f", "f"]}, 50, jsonl=True)
    assert out["status"] == ["ok", "failed", "failed"]
    assert "invalid JSON" in out["error"][1] and "not an object" in out["error"][2]
    assert out["source"] == ["f"] * 3 and len(set(out["id"])) == 3


def test_list_and_check_shards(tmp_path):
    (tmp_path / "d").mkdir()
    pq.write_table(pa.table({"prompt": ["a"]}), tmp_path / "d" / "a.parquet")
    (tmp_path / "d" / "b.jsonl").write_text(json.dumps({"prompt": "b"}) + "\n")
    (tmp_path / "d" / "c.csv").write_text("prompt,seed\nc,1\n")
    (tmp_path / "d" / "notes.txt").write_text("ignored")
    shards = list_shards(str(tmp_path / "d"))
    assert [s.format for s in shards] == ["parquet", "jsonl", "csv"]
    for s in shards:
        check_shard(s, FS)
    assert len(list_shards(str(tmp_path / "d" / "*.csv"))) == 1
    with pytest.raises(ShardError, match="no prompt shards"):
        list_shards(str(tmp_path / "empty*"))


@pytest.mark.parametrize(
    "name, content, needle",
    [
        ("x.parquet", b"PAR1 truncated", "cannot parse parquet"),
        ("x.jsonl", b'{"text": "no prompt key"}\n', "missing required column 'prompt'"),
        ("x.jsonl", b"\xff\xfe bad utf8\n", "not valid UTF-8"),
        ("x.jsonl", b"not json at all\n", "no JSON object lines"),
        ("x.csv", b"text,seed\na,1\n", "missing required column 'prompt'"),
    ],
)
def test_bad_shards_name_file_and_problem(tmp_path, name, content, needle):
    f = tmp_path / name
    f.write_bytes(content)
    (shard,) = list_shards(str(f))
    with pytest.raises(ShardError) as e:
        check_shard(shard, FS)
    assert needle in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def _mixed_shards(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    pq.write_table(pa.table({"prompt": ["a", "b"], "seed": [1, None]}), d / "a.parquet")
    (d / "b.jsonl").write_text('{"prompt": "c", "id": "c1"}\n\n{oops\n[1]\n{"prompt": "d", "id": "../x"}\n')
    (d / "c.csv").write_text("prompt,seed\ne,2\nf,zz\n")
    return list_shards(str(d))


def test_jsonl_failures_name_their_line(tmp_path):
    from dynagen.core.sources import shard_rows

    jsonl = next(s for s in _mixed_shards(tmp_path) if s.format == "jsonl")
    rows = shard_rows(jsonl, FS, 100)
    assert [r["status"] for r in rows] == ["ok", "failed", "failed", "failed"]
    assert rows[1]["error"].startswith("invalid JSON line 3 (") and "(line 4)" in rows[2]["error"]


def test_driver_side_rows_match_the_ray_read(ray_local, tmp_path):
    """``audit --prompts`` and the no-op check read the input without Ray: they must see the ids the job does."""
    from dynagen.core.sources import input_ids, read_prompts

    shards = _mixed_shards(tmp_path)
    ray_rows = read_prompts(shards, FS, 100).take_all()
    assert sorted(input_ids(shards, FS, 100)) == sorted(r["id"] for r in ray_rows)
    assert any("invalid JSON line 3" in r["error"] for r in ray_rows)

"""Property-based bad-input corpus: readers, settings and prompts never crash; each input gets its documented outcome.

Outcomes: a row-level problem → status 'failed' with a reason (the row is kept); a shard-level problem → ShardError
naming the file; a settings problem → SettingsError naming the key. Nothing else may escape.
"""

from __future__ import annotations

import pyarrow.fs as pafs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynagen.core.records import ID_PATTERN, MAX_SEED
from dynagen.core.settings import SettingsError, load_settings
from dynagen.core.sources import ShardError, check_shard, list_shards, normalize_row, parse_json_line

values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(), st.binary(max_size=64),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
rows = st.dictionaries(st.sampled_from(["prompt", "id", "seed", "steps", "negative_prompt", "extra"]), values)


@given(rows)
@settings(max_examples=400, deadline=None)
def test_any_row_normalizes_to_ok_or_failed_with_reason(raw):
    row = normalize_row(raw, max_prompt_chars=200)
    assert row["status"] in ("ok", "failed")
    assert ID_PATTERN.match(row["id"])  # object keys are always safe
    assert 0 <= row["seed"] <= MAX_SEED and len(row["prompt"]) <= 200 and "\x00" not in row["prompt"]
    if row["status"] == "ok":
        assert row["prompt"].strip() and not row["error"]
    else:
        assert row["error"]


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_any_jsonl_line_is_a_row(line):
    row = normalize_row(parse_json_line(line), 100)
    assert row["status"] in ("ok", "failed") and ID_PATTERN.match(row["id"])


def test_huge_and_unicode_prompts():
    big = normalize_row({"prompt": "x" * (10 * 2**20)}, 4000)
    assert big["status"] == "failed" and "too long" in big["error"] and len(big["prompt"]) == 4000
    for p in ["🦄 a unicorn", "\u202eRTL override", "e\u0301 combining", "\ud800 lone surrogate", "tab\tand\nnewline"]:
        row = normalize_row({"prompt": p}, 4000)
        assert row["status"] == "ok" and ID_PATTERN.match(row["id"])


@given(st.binary(max_size=2048), st.sampled_from([".jsonl", ".csv", ".parquet"]))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bytes_as_a_shard_pass_or_fail_clearly(tmp_path_factory, data, ext):
    f = tmp_path_factory.mktemp("shard") / f"s{ext}"
    f.write_bytes(data)
    (shard,) = list_shards(str(f))
    try:
        check_shard(shard, pafs.LocalFileSystem())
    except ShardError as e:
        assert str(f) in str(e) and "\n" not in str(e)


def test_truncated_parquet_and_duplicate_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"prompt": ["a"] * 100}), f)
    f.write_bytes(f.read_bytes()[:-20])  # cut the footer
    (shard,) = list_shards(str(f))
    try:
        check_shard(shard, pafs.LocalFileSystem())
        raise AssertionError("truncated parquet must fail")
    except ShardError as e:
        assert "cannot parse parquet" in str(e)


@given(st.dictionaries(st.sampled_from(["images.steps", "images.batch_size", "images.scheduler", "llm.large_share",
                                        "storage.max_attempts", "images.guidance_scale"]), values, max_size=3))
@settings(max_examples=300, deadline=None)
def test_any_settings_overrides_validate_or_fail_with_key(over):
    try:
        load_settings(None, over, env={})
    except SettingsError as e:
        assert "setting '" in str(e) and "\n" not in str(e)

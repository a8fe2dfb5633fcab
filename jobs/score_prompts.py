"""``dynagen route score``: score every prompt in SRC with a router → Parquet ``id, prompt, score, status, error``.

Runs in-process (no Ray): routers are cheap and a scoring file is meant for offline evaluation of a router on any
labelled set. Reads the same shards as the jobs and normalizes rows the same way (ids included), so scores join
back to responses on ``id``.

    python -m jobs.score_prompts --prompts SRC --out FILE.parquet [--router learned]
"""

from __future__ import annotations

import argparse
import io
import json
import sys

from dynagen.core.settings import Settings

SCORE_BATCH = 512  # prompts per router call: bounds memory on big shards, big enough to batch the encoder


def _read_shard(shard, fs) -> dict[str, list]:
    """One shard → raw column lists (as Ray's readers would give them)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from dynagen.core.sources import csv_options

    if shard.format == "parquet":
        with fs.open_input_file(shard.path) as f:
            return pq.read_table(f).to_pydict()
    with fs.open_input_stream(shard.path) as f:
        data = f.read()
    if shard.format == "csv":
        return pacsv.read_csv(io.BytesIO(data), convert_options=csv_options()).to_pydict()
    return {"text": [ln for ln in data.decode("utf-8").splitlines() if ln.strip()]}


def score_file(settings: Settings, src: str, out: str) -> int:
    """Score every row of every shard in ``src``; write ``out`` (local or s3://); return the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from actors.router import get_router
    from dynagen.core.sources import normalize_batch
    from dynagen.core.storage import Storage, is_s3, split_s3
    from pipelines.common import check_inputs

    s = settings.llm
    shards, _, fs = check_inputs(settings, src)
    router = get_router(s.router, s.router_path)
    cols: dict[str, list] = {"id": [], "prompt": [], "score": [], "status": [], "error": []}
    for shard in shards:
        rows = normalize_batch(_read_shard(shard, fs), s.max_prompt_chars, jsonl=shard.format == "jsonl")
        for start in range(0, len(rows["id"]), SCORE_BATCH):
            part = {k: v[start : start + SCORE_BATCH] for k, v in rows.items()}
            ok = [i for i, st in enumerate(part["status"]) if st == "ok"]
            scores, reasons = router.score_checked([part["prompt"][i] for i in ok])
            by_row = dict(zip(ok, zip(scores, reasons)))
            for i in range(len(part["id"])):
                sc, why = by_row.get(i, (None, None))
                failed = i not in by_row or why is not None
                cols["id"].append(part["id"][i])
                cols["prompt"].append(part["prompt"][i])
                cols["score"].append(None if failed else float(sc))
                cols["status"].append("failed" if failed else "ok")
                cols["error"].append((part["error"][i] or why or None) if failed else None)
    table = pa.table(cols, schema=pa.schema([("id", pa.string()), ("prompt", pa.string()), ("score", pa.float64()),
                                             ("status", pa.string()), ("error", pa.string())]))
    table = table.replace_schema_metadata({"dynagen.router": json.dumps({"name": s.router, "path": s.router_path})})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    if is_s3(out):
        bucket, key = split_s3(out)
        Storage(f"s3://{bucket}", settings.storage).put_bytes(key, buf.getvalue())
    else:
        from pathlib import Path

        Path(out).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(out).expanduser().write_bytes(buf.getvalue())
    return table.num_rows


def main(argv: list[str] | None = None) -> int:
    from dynagen.core.settings import SettingsError, load_settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--router")
    a = p.parse_args(argv)
    try:
        settings = load_settings(None, {"llm.router": a.router})[0]
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"scored {score_file(settings, a.prompts, a.out)} rows → {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

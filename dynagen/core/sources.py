"""Prompt shards: find them, check them before a run, read them with Ray Data, normalize rows.

A *shard* is one Parquet, JSONL or CSV file (local or ``s3://``). Shard-level problems (unparseable file, no
``prompt`` column) are found on the driver before anything is generated. Row-level problems (empty prompt,
bad seed, invalid JSON line) become ``status="failed"`` rows with a reason; the other rows go on.
"""

from __future__ import annotations

import glob as globmod
import json
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from dynagen.core.records import ROW_COLUMNS, ID_PATTERN, MAX_SEED, MAX_STEPS, content_id, prompt_problem, seed_from_id
from dynagen.core.storage import Storage, is_s3, split_s3

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
           ".csv": "csv"}
OPTIONAL_COLUMNS = ("id", "seed", "negative_prompt", "steps")


class ShardError(ValueError):
    """A shard that cannot be used; ``str()`` is one line naming the file and the problem."""


@dataclass(frozen=True)
class Shard:
    path: str  # path for the pyarrow filesystem (bucket/key for S3)
    uri: str  # what the user sees
    format: str
    rows: int | None = None  # rows in the shard once checked (the progress total); None = not counted


def _format_of(name: str) -> str | None:
    return FORMATS.get(Path(name).suffix.lower())


def list_shards(src: str, storage: Storage | None = None) -> list[Shard]:
    """Expand SRC (a file, a directory, a glob, or an s3:// prefix/object) into shards, sorted by name."""
    if is_s3(src):
        import pyarrow.fs as pafs

        fs = (storage or Storage(src)).filesystem()
        bucket, key = split_s3(src)
        base = f"{bucket}/{key}".rstrip("/")
        info = fs.get_file_info(base)
        if info.type == pafs.FileType.File:
            paths = [base]
        else:
            paths = [i.path for i in fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
                     if i.type == pafs.FileType.File]
        shards = [Shard(p, f"s3://{p}", f) for p in sorted(paths) if (f := _format_of(p))]
    else:
        p = Path(src).expanduser()
        if p.is_file():
            files = [p]
        elif p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file())
        else:
            files = sorted(Path(q) for q in globmod.glob(str(p), recursive=True) if Path(q).is_file())
        shards = [Shard(str(f.resolve()), str(f), fmt) for f in files if (fmt := _format_of(f.name))]
        if p.is_file() and not shards:
            raise ShardError(f"{src}: unsupported file type (use .parquet, .jsonl or .csv)")
    if not shards:
        raise ShardError(f"no prompt shards found at {src} (looked for .parquet, .jsonl, .csv)")
    return shards


def check_shard(shard: Shard, fs) -> int:
    """Raise ShardError if the shard can't be parsed or has no ``prompt`` column/key; else return its row count
    (JSONL: non-blank lines, what ``read_text`` yields)."""
    try:
        if shard.format == "parquet":
            import pyarrow.parquet as pq

            with fs.open_input_file(shard.path) as f:
                pf = pq.ParquetFile(f)
                names, rows = pf.schema_arrow.names, pf.metadata.num_rows
        elif shard.format == "csv":
            import pyarrow.csv as pacsv

            with fs.open_input_stream(shard.path) as f:
                table = pacsv.read_csv(f, convert_options=csv_options())
            names, rows = table.column_names, table.num_rows
        else:
            with fs.open_input_stream(shard.path) as f:
                text = f.read().decode("utf-8")
            names, seen_object, rows = set(), False, 0
            for line in text.splitlines():
                if line.strip():
                    rows += 1
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a bad line is a failed row, not a bad shard
                    if isinstance(obj, dict):
                        seen_object = True
                        names.update(obj)
            if not seen_object:
                raise ShardError(f"{shard.uri}: no JSON object lines (expected JSONL, one object per line)")
    except ShardError:
        raise
    except UnicodeDecodeError as e:
        raise ShardError(f"{shard.uri}: not valid UTF-8 (byte {e.start})") from None
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with multi-line texts
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShardError(f"{shard.uri}: cannot parse {shard.format}: {msg}") from None
    if "prompt" not in names:
        raise ShardError(f"{shard.uri}: missing required column 'prompt' (found: {', '.join(sorted(names)) or 'none'})")
    return rows


# Row normalization (pure) -------------------------------------------------------------------------------


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and math.isnan(v)) or (isinstance(v, str) and v.strip() == "")


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool) or not isinstance(v, (numbers.Real, str)):
        return None
    if isinstance(v, numbers.Integral):  # numpy ints from Parquet too
        return int(v)
    if isinstance(v, numbers.Real) and float(v).is_integer():
        return int(v)
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v.strip())
    return None


def normalize_row(raw: dict[str, Any], max_prompt_chars: int) -> dict[str, Any]:
    """One raw row (any types) → a row with ROW_COLUMNS; problems become status='failed' with a reason."""
    errors: list[str] = []
    prompt = raw.get("prompt")
    if isinstance(prompt, bytes):
        prompt = prompt.decode("utf-8", "replace")
    if prompt is None:
        if not raw.get("_error"):
            errors.append("missing prompt")
        prompt = ""
    else:
        problem = prompt_problem(prompt, max_prompt_chars)
        if problem is not None:
            errors.append(problem.reason + (" (images.max_prompt_chars)" if problem.kind == "too_long" else ""))
        prompt = prompt if isinstance(prompt, str) else str(prompt)
    prompt = prompt[:max_prompt_chars].replace("\x00", "")

    neg = raw.get("negative_prompt")
    neg = "" if _missing(neg) else (neg if isinstance(neg, str) else str(neg))[:max_prompt_chars].replace("\x00", "")

    seed_raw, steps_raw, id_raw = raw.get("seed"), raw.get("steps"), raw.get("id")
    seed = None if _missing(seed_raw) else _as_int(seed_raw)
    if not _missing(seed_raw) and (seed is None or not 0 <= seed <= MAX_SEED):
        errors.append(f"bad seed {str(seed_raw)[:40]!r} (need an integer in 0..{MAX_SEED})")
        seed = None
    steps = 0 if _missing(steps_raw) else _as_int(steps_raw)  # 0 inside: unset, the job's steps decide
    if not _missing(steps_raw) and (steps is None or not 1 <= steps <= MAX_STEPS):  # an explicit 0 is a bad row
        errors.append(f"bad steps {str(steps_raw)[:40]!r} (need an integer in 1..{MAX_STEPS})")
        steps = 0

    if _missing(id_raw):
        row_id = content_id(prompt, neg, seed_raw if seed is not None else None, raw.get("_line"))
    else:
        row_id = str(id_raw)
        if not ID_PATTERN.match(row_id):
            # Never build a key from it: derive a safe one and record why.
            errors.append(f"invalid id {row_id[:60]!r} (allowed: letters, digits, '.', '_', '-', at most 128)")
            row_id = "bad-" + content_id(row_id)
    if seed is None:
        seed = seed_from_id(row_id)
    if raw.get("_error"):
        errors.insert(0, raw["_error"])
    return {
        "id": row_id, "prompt": prompt, "negative_prompt": neg, "seed": int(seed), "steps": int(steps),
        "status": "failed" if errors else "ok", "error": "; ".join(errors),
    }


def parse_json_line(line: str, lineno: int | None = None) -> dict[str, Any]:
    """A JSONL line → raw row; an invalid line becomes a row that normalizes to a failure (naming its line number,
    1-based, when known)."""
    where = f" {lineno}" if lineno is not None else ""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return {"prompt": None, "_line": line, "_error": f"invalid JSON line{where} ({e.msg})"}
    if not isinstance(obj, dict):
        at = f" (line {lineno})" if lineno is not None else ""
        return {"prompt": None, "_line": line, "_error": f"JSON line is a {type(obj).__name__}, not an object{at}"}
    return obj


def jsonl_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) for every non-blank line of a JSONL shard: what becomes a row."""
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def normalize_batch(batch: dict[str, Iterable], max_prompt_chars: int, jsonl: bool = False) -> dict[str, list]:
    """Column batch (any source) → normalized column batch (ROW_COLUMNS)."""
    cols = list(batch)
    n = len(batch[cols[0]]) if cols else 0
    lists = {c: list(batch[c]) for c in cols}
    out: dict[str, list] = {k: [] for k in ROW_COLUMNS}
    for i in range(n):
        if jsonl:
            raw = parse_json_line(lists["text"][i], lists["lineno"][i] if "lineno" in lists else None)
        else:
            raw = {c: lists[c][i] for c in cols if c != "path"}
        for k, v in normalize_row(raw, max_prompt_chars).items():
            out[k].append(v)
    # Which shard a row came from (Ray's include_paths column), kept for the metadata and the id ledger.
    out["source"] = [str(p) for p in lists["path"]] if "path" in lists else [""] * n
    return out


def csv_options():
    import pyarrow as pa
    import pyarrow.csv as pacsv

    # Everything as strings so a bad seed fails its row instead of the shard's type inference.
    return pacsv.ConvertOptions(column_types={c: pa.string() for c in ("prompt", *OPTIONAL_COLUMNS)})


def shard_rows(shard: Shard, fs, max_prompt_chars: int) -> list[dict[str, Any]]:
    """A checked shard's normalized rows, read here without Ray (the driver's look at its input: ``audit
    --prompts``, the no-op check before a run). The same rows, ids included, as :func:`read_prompts` gives."""
    if shard.format == "jsonl":
        with fs.open_input_stream(shard.path) as f:
            text = f.read().decode("utf-8")
        lines = jsonl_lines(text)
        batch = {"text": [t for _, t in lines], "lineno": [n for n, _ in lines]}
        out = normalize_batch(batch, max_prompt_chars, jsonl=True)
    else:
        if shard.format == "parquet":
            import pyarrow.parquet as pq

            with fs.open_input_file(shard.path) as f:
                table = pq.read_table(f)
        else:
            import pyarrow.csv as pacsv

            with fs.open_input_stream(shard.path) as f:
                table = pacsv.read_csv(f, convert_options=csv_options())
        out = normalize_batch(table.to_pydict(), max_prompt_chars)
    n = len(out["id"])
    return [{k: v[i] for k, v in out.items()} for i in range(n)]


def input_ids(shards: list[Shard], fs, max_prompt_chars: int, limit: int | None = None) -> list[str]:
    """Every row's id over the shards, in shard order (repeats kept), at most ``limit`` rows."""
    ids: list[str] = []
    for shard in shards:
        ids.extend(r["id"] for r in shard_rows(shard, fs, max_prompt_chars))
        if limit is not None and len(ids) >= limit:
            return ids[:limit]
    return ids


# Reading with Ray Data -------------------------------------------------------------------------------------


def read_prompts(shards: list[Shard], fs, max_prompt_chars: int, num_cpus: float = 0.25):
    """One Ray Dataset of normalized rows from checked shards (Parquet, JSONL and CSV may be mixed)."""
    import numpy as np
    import ray.data

    def _norm(jsonl: bool):
        def fn(batch):
            out = normalize_batch(batch, max_prompt_chars, jsonl=jsonl)
            return {k: np.asarray(v, dtype=np.int64 if k in ("seed", "steps") else object) for k, v in out.items()}

        return fn

    by_fmt: dict[str, list[str]] = {}
    for s in shards:
        by_fmt.setdefault(s.format, []).append(s.path)
    parts = []
    kw = dict(filesystem=fs, num_cpus=num_cpus, include_paths=True)
    if "parquet" in by_fmt:
        # Ray 2.60's V2 Parquet reader adds a ListFiles stage that always asks for one whole CPU: next to a diffusion
        # actor holding 1.5 of 2 CPUs it never schedules and the run hangs (bench/pipeline.py did). The V1 reader
        # honours num_cpus. The dataset keeps a copy of the context, so the switch is local to this read.
        ctx = ray.data.DataContext.get_current()
        v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
        try:
            parts.append(ray.data.read_parquet(by_fmt["parquet"], **kw).map_batches(_norm(False), num_cpus=num_cpus))
        finally:
            ctx.use_datasource_v2 = v2
    if "jsonl" in by_fmt:
        # Whole files, split into lines here (not read_json: one bad line must fail one row, not the whole shard;
        # not read_text: a failed line's reason names its line number).
        def lines(batch):
            out: dict[str, list] = {"text": [], "lineno": [], "path": []}
            for data, path in zip(batch["bytes"], batch["path"]):
                for n, line in jsonl_lines(bytes(data).decode("utf-8")):
                    out["text"].append(line)
                    out["lineno"].append(n)
                    out["path"].append(path)
            return {k: np.asarray(v, dtype=np.int64 if k == "lineno" else object) for k, v in out.items()}

        ds = ray.data.read_binary_files(by_fmt["jsonl"], **kw).map_batches(lines, num_cpus=num_cpus)
        parts.append(ds.map_batches(_norm(True), num_cpus=num_cpus))
    if "csv" in by_fmt:
        # Everything as strings so a bad seed fails its row instead of the shard's type inference.
        parts.append(ray.data.read_csv(by_fmt["csv"], convert_options=csv_options(), **kw).map_batches(_norm(False), num_cpus=num_cpus))
    ds = parts[0]
    return ds.union(*parts[1:]) if len(parts) > 1 else ds

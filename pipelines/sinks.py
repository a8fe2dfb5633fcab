"""Ray Data sinks: all of the batch jobs' writes happen here (actors only return data): :class:`ImageSink` for the
image job, :class:`ResponseSink` for the LLM job, each using the whole Datasink lifecycle (image job's files named):

* ``on_write_start`` (driver, before the first write task): the run's start record, ``runs/<run_id>.json`` with
  status ``running``. The destination names every run that wrote to it, including one whose driver died (its record
  stays ``running``; the rerun redoes its unfinished rows).
* ``write`` (write tasks), per block: PNGs first (``images/<id>.png``), then one metadata Parquet whose name is
  derived from the block's ids, so a retried write task overwrites its own file instead of adding duplicate rows.
  A metadata row therefore never exists without its image. Each task returns small stats.
* ``on_write_complete`` (driver): the run summary, ``runs/<run_id>.json`` with status ``ok``, from those stats.
  The HTML report is not the sink's job: the pipeline renders it after the sink completes (``pipelines/report.py``).
* ``on_write_failed`` (driver): the summary with status ``failed`` and the cause.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections import Counter
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Iterable

from ray.data import Datasink

from dynagen.core.errors import root_cause
from dynagen.core.records import (
    ERROR, FAILED, FINAL_STATUSES, MAX_FAILURES, METADATA_COLUMNS, OK, RESPONSE_COLUMNS, ROUTES, RUNNING, LLMRunSummary, PoolStats,
    RunSummary, metadata_schema, outcome_totals, outcomes, reason_key, response_schema,
)
from dynagen.core.storage import Storage

THUMBS_PER_STEP = 6  # contact-sheet samples each write task keeps per step count
THUMB_PX = 96


def _thumb(png: bytes) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def metadata_table(rows: dict[str, list], image_uris: list[str | None], run_id: str):
    """Column lists from the diffusion stage → the metadata Arrow table (no image bytes)."""
    import pyarrow as pa

    n = len(rows["id"])
    now = datetime.now(timezone.utc)
    cols: dict[str, list] = {}
    for c in METADATA_COLUMNS:
        if c == "image_uri":
            cols[c] = image_uris
        elif c == "run_id":
            cols[c] = [run_id] * n
        elif c == "created_at":
            cols[c] = [now] * n
        elif c == "predicted_steps":
            cols[c] = [int(v) if v else None for v in rows.get(c, [0] * n)]
        elif c == "planned_steps":  # rows from a stage without early stopping: the budget is the steps run
            cols[c] = rows.get(c, rows["steps"])
        elif c == "stopped_early":
            cols[c] = [bool(v) for v in rows.get(c, [False] * n)]
        elif c == "error":
            cols[c] = [v or None for v in rows[c]]
        else:
            cols[c] = rows.get(c, [None] * n)
    return pa.Table.from_pydict(cols, schema=metadata_schema())


def block_stats(rows: dict[str, list]) -> dict[str, Any]:
    """Small per-block statistics the driver aggregates into the run summary."""
    ok = [i for i, s in enumerate(rows["status"]) if s == "ok"]
    stats = {
        "ok": len(ok),
        "failed": len(rows["status"]) - len(ok),
        "retryable": sum(1 for s in rows["status"] if s == ERROR),
        "denoising_steps": sum(int(rows["steps"][i]) for i in ok),
        "unet_evals": sum(int(rows["unet_evals"][i]) for i in ok),
        "steps_histogram": Counter(str(int(rows["steps"][i])) for i in ok),
        "predicted_steps_histogram": Counter(str(int(v)) for v in rows.get("predicted_steps", []) if v),
        "failure_reasons": Counter(reason_key(e) for s, e in zip(rows["status"], rows["error"]) if s != "ok"),
        "batches": {rows["batch_id"][i]: int(rows["batch_size"][i]) for i in ok},
        "by_steps": {},
        "failures": [{"id": rows["id"][i], "status": st, "error": (rows["error"][i] or "")[:200]}
                     for i, st in enumerate(rows["status"]) if st != "ok"][:MAX_FAILURES],
        "thumbs": {},
    }
    latency = rows["latency_ms"] if "latency_ms" in rows else [0.0] * len(rows["status"])  # missing: as the metadata
    for i in ok:  # Σ per step count; the driver turns them into means and shares
        b = stats["by_steps"].setdefault(str(int(rows["steps"][i])), {"images": 0, "ms": 0.0, "unet_evals": 0})
        b["images"] += 1
        b["ms"] += float(latency[i] or 0.0) / max(1, int(rows["batch_size"][i]))
        b["unet_evals"] += int(rows["unet_evals"][i])
    for i in ok:
        bucket = stats["thumbs"].setdefault(str(int(rows["steps"][i])), [])
        if len(bucket) < THUMBS_PER_STEP:
            bucket.append((rows["id"][i], rows["prompt"][i][:120], _thumb(rows["image"][i])))
    return stats


def write_run_record(storage: Storage, summary) -> None:
    """``runs/<run_id>.json``: a run summary (image or LLM job) as it stands."""
    storage.put_bytes(f"runs/{summary.run_id}.json", json.dumps(summary.to_dict(), indent=2).encode(),
                      "application/json")


def start_run_record(storage: Storage, summary) -> None:
    """The start record ``on_write_start`` writes: the summary so far, status ``running``."""
    summary.status = RUNNING
    write_run_record(storage, summary)


class _RunSink(Datasink):
    """The driver side both sinks share: ``runs/<run_id>.json`` is written at the start (status running), by
    ``finish`` (ok) or by ``fail`` (failed, with the cause). Subclasses give ``finish``, ``write`` and ``totals``
    (the destination's ok/failed counts, read for a failed run's summary)."""

    def __init__(self, storage: Storage, summary, ledger=None):
        self.storage = storage
        self.summary = summary
        self.ledger = ledger
        self._t0 = time.time()

    def on_write_start(self, schema=None) -> None:
        start_run_record(self.storage, self.summary)

    def on_write_complete(self, write_result) -> None:
        self.finish(write_result.write_returns)

    def on_write_failed(self, error: Exception) -> None:
        self.fail(error)

    def fail(self, error: BaseException) -> None:
        """Record a stopped run in ``runs/<run_id>.json``. Ray hands ``on_write_failed`` its own wrapper (often a bare
        SystemException), so the pipeline calls this again with the exception it caught, whose cause is readable."""
        write_failed_summary(self.storage, self.summary, error, self._t0, self.totals)

    def finish(self, returns: Iterable[dict[str, Any]]):
        raise NotImplementedError

    @staticmethod
    def totals(storage: Storage) -> tuple[int, int]:
        raise NotImplementedError


class ImageSink(_RunSink):
    """Writes images + metadata to a Storage root; the driver side writes ``runs/<run_id>.json`` (start, then the
    summary). After the write, ``thumbs`` holds the contact-sheet samples the pipeline's report shows."""

    @staticmethod
    def totals(storage: Storage) -> tuple[int, int]:
        return destination_totals(storage)

    def __init__(self, storage: Storage, summary: RunSummary, batch_size: int, ledger=None):
        super().__init__(storage, summary, ledger)
        self.batch_size = batch_size
        self.thumbs: dict[str, list[tuple[str, str, bytes]]] = {}

    # -- on the driver ----------------------------------------------------------------------------------

    def finish(self, returns: Iterable[dict[str, Any]]) -> RunSummary:
        """Aggregate write-task stats and write the summary JSON (status ok); return the summary."""
        s = self.summary
        hist, phist, reasons, batches, thumbs = Counter(), Counter(), Counter(), {}, {}
        by_steps: dict[str, dict] = {}
        failures: list[dict[str, str]] = []
        for r in returns:
            by_steps = merge_by_steps(by_steps, r.get("by_steps", {}))
            failures.extend(r.get("failures", [])[: MAX_FAILURES - len(failures)])
            s.ok += r["ok"]
            s.failed += r["failed"]
            s.retryable += r.get("retryable", 0)
            s.denoising_steps += r["denoising_steps"]
            s.unet_evals += r["unet_evals"]
            hist.update(r["steps_histogram"])
            phist.update(r["predicted_steps_histogram"])
            reasons.update(r["failure_reasons"])
            batches.update(r["batches"])
            for k, v in r["thumbs"].items():
                thumbs.setdefault(k, []).extend(v[: THUMBS_PER_STEP - len(thumbs.get(k, []))])
        if self.ledger is not None:
            import ray

            st = ray.get(self.ledger.stats.remote())
            s.skipped, s.duplicates = st["done"], st["duplicate"]
        s.wall_s = round(time.time() - self._t0, 3)
        s.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        s.images_per_s = round(s.ok / s.wall_s, 3) if s.wall_s > 0 else 0.0
        s.batches = len(batches)
        s.mean_batch_fill = round(sum(batches.values()) / (len(batches) * self.batch_size), 4) if batches else 0.0
        key = lambda kv: int(kv[0])  # noqa: E731
        s.steps_histogram = dict(sorted(hist.items(), key=key))
        s.predicted_steps_histogram = dict(sorted(phist.items(), key=key))
        s.failure_reasons = dict(reasons.most_common(20))
        s.steps_breakdown = steps_breakdown(by_steps, s.unet_evals)
        s.failures = failures
        s.dest_ok, s.dest_failed = destination_totals(self.storage)  # metadata is written: every run counted
        s.status = "ok"
        write_run_record(self.storage, s)
        self.thumbs = dict(sorted(thumbs.items(), key=key))
        return s

    # -- in write tasks ---------------------------------------------------------------------------------
    def write(self, blocks: Iterable, ctx) -> dict[str, Any]:
        from ray.data.block import BlockAccessor

        total: dict[str, Any] | None = None
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            rows = table.to_pydict()
            stats = self.write_rows(rows)
            total = stats if total is None else _merge(total, stats)
        return total or block_stats({"status": [], "error": [], "steps": [], "unet_evals": [], "batch_id": [],
                                     "batch_size": [], "id": [], "prompt": [], "image": [], "latency_ms": []})

    def write_rows(self, rows: dict[str, list]) -> dict[str, Any]:
        uris: list[str | None] = []
        for rid, status, png in zip(rows["id"], rows["status"], rows["image"]):
            uris.append(self.storage.put_bytes(f"images/{rid}.png", png, "image/png") if status == "ok" else None)
        table = metadata_table(rows, uris, self.summary.run_id)
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        name = hashlib.sha256("\x1f".join(rows["id"]).encode()).hexdigest()[:16]
        self.storage.put_bytes(f"metadata/{self.summary.run_id}-{name}.parquet", buf.getvalue())
        return block_stats(rows)


def write_failed_summary(storage: Storage, summary, error: BaseException, t0: float, totals) -> None:
    """A stopped run still leaves ``runs/<run_id>.json`` (status failed, the cause, the destination's totals), best
    effort: when storage itself is what failed, this write fails too and the CLI's one-line error is the record."""
    summary.status, summary.error = "failed", root_cause(error)
    summary.wall_s = round(time.time() - t0, 3)
    summary.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        summary.dest_ok, summary.dest_failed = totals(storage)
        write_run_record(storage, summary)
    except Exception:  # noqa: BLE001 - the run's own error is the one to report
        pass


def merge_by_steps(a: dict[str, dict], b: dict[str, dict]) -> dict[str, dict]:
    out = {k: dict(v) for k, v in a.items()}
    for k, v in b.items():
        t = out.setdefault(k, {"images": 0, "ms": 0.0, "unet_evals": 0})
        for f in ("images", "ms", "unet_evals"):
            t[f] += v[f]
    return out


def steps_breakdown(by_steps: dict[str, dict], unet_evals: int) -> dict[str, dict[str, float]]:
    """Per step count: images, mean ms per image, share of the run's UNet evaluations (sorted by steps)."""
    return {k: {"images": v["images"], "mean_ms_per_image": round(v["ms"] / v["images"], 2) if v["images"] else 0.0,
                "unet_share": round(v["unet_evals"] / unet_evals, 4) if unet_evals else 0.0}
            for k, v in sorted(by_steps.items(), key=lambda kv: int(kv[0]))}


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k in ("ok", "failed", "retryable", "denoising_steps", "unet_evals"):
        out[k] = a[k] + b[k]
    for k in ("steps_histogram", "predicted_steps_histogram", "failure_reasons"):
        out[k] = a[k] + b[k]
    out["batches"] = {**a["batches"], **b["batches"]}
    out["by_steps"] = merge_by_steps(a.get("by_steps", {}), b.get("by_steps", {}))
    out["failures"] = (a.get("failures", []) + b.get("failures", []))[:MAX_FAILURES]
    thumbs = {k: list(v) for k, v in a["thumbs"].items()}
    for k, v in b["thumbs"].items():
        thumbs.setdefault(k, []).extend(v[: max(0, THUMBS_PER_STEP - len(thumbs.get(k, [])))])
    out["thumbs"] = thumbs
    return out


def read_metadata(storage: Storage, columns: list[str] | None = None):
    """All metadata rows under a root as one Arrow table (empty table if none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = storage.filesystem()
    tables = [pq.read_table(storage.path(k), columns=columns, filesystem=fs)
              for k in storage.list("metadata") if k.endswith(".parquet")]
    if not tables:
        schema = metadata_schema()
        return schema.empty_table().select(columns) if columns else schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def done_ids(storage: Storage) -> set[str]:
    """Ids an earlier run finished: ok with the image present, or failed on bad input (final). Runtime errors
    (status ``error``) are not done: the rerun retries them."""
    table = read_metadata(storage, ["id", "status"])
    images = {k[len("images/") : -len(".png")] for k in storage.list("images")}
    best = outcomes(table["id"].to_pylist(), table["status"].to_pylist())
    return {i for i, s in best.items() if s == FAILED or (s == OK and i in images)}


def destination_totals(storage: Storage) -> tuple[int, int]:
    """(ok, not ok) over the destination's ids, every run counted, each id by its latest outcome."""
    table = read_metadata(storage, ["id", "status"])
    return outcome_totals(table["id"].to_pylist(), table["status"].to_pylist())


# The LLM job: responses/*.parquet ------------------------------------------------------------------------------


def response_table(rows: dict[str, list], run_id: str):
    """Column lists from the model stages → the responses Arrow table."""
    import pyarrow as pa

    n = len(rows["id"])
    now = datetime.now(timezone.utc)
    cols: dict[str, list] = {}
    for c in RESPONSE_COLUMNS:
        if c == "run_id":
            cols[c] = [run_id] * n
        elif c == "created_at":
            cols[c] = [now] * n
        elif c == "router_score":
            cols[c] = [None if v is None or math.isnan(v) else float(v) for v in rows[c]]
        elif c in ("error", "route", "model"):
            cols[c] = [v or None for v in rows.get(c, [None] * n)]
        else:
            cols[c] = rows.get(c, [None] * n)
    return pa.Table.from_pydict(cols, schema=response_schema())


def response_block_stats(rows: dict[str, list]) -> dict[str, Any]:
    """Small per-block statistics the driver aggregates into the run summary."""
    pools: dict[str, dict[str, Any]] = {}
    routes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    ok = failed = retryable = 0
    for i, status in enumerate(rows["status"]):
        route = rows["route"][i] or "none"
        routes[route] += 1
        if status == "ok":
            ok += 1
        else:
            failed += 1
            retryable += status == ERROR
            reasons[reason_key(rows["error"][i])] += 1
        if route not in ROUTES:
            continue
        p = pools.setdefault(route, asdict(PoolStats(model=rows["model"][i] or "")))
        p["rows"] += 1
        p["ok" if status == "ok" else "failed"] += 1
        p["truncated"] += int(bool(rows["truncated"][i]))
        p["prompt_tokens"] += int(rows["prompt_tokens"][i])
        p["completion_tokens"] += int(rows["completion_tokens"][i])
        if rows["batch_size"][i]:
            # Each row carries its batch's latency; its share of the batch's time adds up to the batch's time once.
            p["busy_s"] += float(rows["latency_ms"][i]) / 1000 / int(rows["batch_size"][i])
    return {"ok": ok, "failed": failed, "retryable": retryable, "routes": routes, "failure_reasons": reasons,
            "pools": pools}


def merge_response_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {"ok": a["ok"] + b["ok"], "failed": a["failed"] + b["failed"],
           "retryable": a.get("retryable", 0) + b.get("retryable", 0), "routes": a["routes"] + b["routes"],
           "failure_reasons": a["failure_reasons"] + b["failure_reasons"], "pools": {}}
    for route in set(a["pools"]) | set(b["pools"]):
        pa_, pb = a["pools"].get(route), b["pools"].get(route)
        if pa_ is None or pb is None:
            out["pools"][route] = dict(pa_ or pb)
            continue
        out["pools"][route] = {k: (pa_[k] + pb[k] if k != "model" else pa_[k] or pb[k]) for k in pa_}
    return out


class ResponseSink(_RunSink):
    """Writes ``responses/*.parquet`` in write tasks; the driver side writes ``runs/<run_id>.json`` (start record,
    then the summary), with the same lifecycle as :class:`ImageSink`."""

    @staticmethod
    def totals(storage: Storage) -> tuple[int, int]:
        return response_totals(storage)

    def finish(self, returns: Iterable[dict[str, Any]]) -> LLMRunSummary:
        """Aggregate write-task stats, write the summary JSON; return the summary."""
        s = self.summary
        total = {"ok": 0, "failed": 0, "retryable": 0, "routes": Counter(), "failure_reasons": Counter(), "pools": {}}
        for r in returns:
            if r:
                total = merge_response_stats(total, r)
        s.ok, s.failed, s.retryable = total["ok"], total["failed"], total["retryable"]
        s.routes = {k: int(total["routes"].get(k, 0)) for k in (*ROUTES, "none")}
        routed = s.routes["small"] + s.routes["large"]
        s.realised_large_share = round(s.routes["large"] / routed, 4) if routed else None
        for route, p in sorted(total["pools"].items()):
            p["busy_s"] = round(p["busy_s"], 3)
            p["tokens_per_s"] = round(p["completion_tokens"] / p["busy_s"], 2) if p["busy_s"] > 0 else 0.0
            s.pools[route] = p
        s.failure_reasons = dict(total["failure_reasons"].most_common(20))
        if self.ledger is not None:
            import ray

            st = ray.get(self.ledger.stats.remote())
            s.skipped, s.duplicates = st["done"], st["duplicate"]
        s.wall_s = round(time.time() - self._t0, 3)
        s.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        s.dest_ok, s.dest_failed = response_totals(self.storage)  # responses are written: every run counted
        s.status = "ok"
        write_run_record(self.storage, s)
        return s

    def write(self, blocks: Iterable, ctx) -> dict[str, Any] | None:
        import pyarrow.parquet as pq
        from ray.data.block import BlockAccessor

        total = None
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            if table.num_rows == 0:
                continue
            rows = table.to_pydict()
            buf = io.BytesIO()
            pq.write_table(response_table(rows, self.summary.run_id), buf)
            name = hashlib.sha256("\x1f".join(rows["id"]).encode()).hexdigest()[:16]
            self.storage.put_bytes(f"responses/{self.summary.run_id}-{name}.parquet", buf.getvalue())
            stats = response_block_stats(rows)
            total = stats if total is None else merge_response_stats(total, stats)
        return total


def read_responses(storage: Storage, columns: list[str] | None = None):
    """All response rows under a root as one Arrow table (empty table if none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs = storage.filesystem()
    tables = [pq.read_table(storage.path(k), columns=columns, filesystem=fs)
              for k in storage.list("responses") if k.endswith(".parquet")]
    if not tables:
        schema = response_schema()
        return schema.empty_table().select(columns) if columns else schema.empty_table()
    return pa.concat_tables(tables, promote_options="default")


def response_done_ids(storage: Storage) -> set[str]:
    """Ids an earlier run finished: answered, or failed on bad input. Runtime errors are retried (as in the image job)."""
    t = read_responses(storage, ["id", "status"])
    return {i for i, s in outcomes(t["id"].to_pylist(), t["status"].to_pylist()).items() if s in FINAL_STATUSES}


def response_totals(storage: Storage) -> tuple[int, int]:
    """(ok, not ok) over the destination's ids, every run counted, each id by its latest outcome."""
    t = read_responses(storage, ["id", "status"])
    return outcome_totals(t["id"].to_pylist(), t["status"].to_pylist())

"""The batch LLM pipeline: prompt shards → router → small / large model actor pools → storage.

``run(settings, src, dest)`` wires the stages; every stage's resources are set here, not in the actors.
Writes ``DEST/responses/<run_id>-<hash>.parquet`` (one file per write block, named from the block's ids so a
retried write overwrites itself) and ``DEST/runs/<run_id>.json`` (an :class:`LLMRunSummary`). A rerun skips ids
already in ``DEST/responses`` (resume), exactly like the image job.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

from ray.data import Datasink

from dynagen.core.records import ERROR, FINAL_STATUSES, outcome_totals, outcomes
from dynagen.core.settings import Settings
from dynagen.core.storage import Storage
from dynagen.core.errors import root_cause
from pipelines.images import LIGHT_CPU, RunError, check_inputs, claim_rows, new_run_id
from pipelines.sinks import start_run_record, write_failed_summary, write_run_record

RESPONSE_COLUMNS = (
    "id", "prompt", "route", "router_score", "model", "response", "prompt_tokens", "completion_tokens", "latency_ms",
    "truncated", "status", "error", "source", "run_id", "created_at",
)
ROUTES = ("small", "large")
ROUTER_BATCH = 256  # rows per router call: big enough to batch the encoder well, small enough to stream
WINDOW_BATCHES = 4  # generation batches per LLM actor call: length-sorting needs a window of rows to sort


def response_schema():
    import pyarrow as pa

    s, i = pa.string(), pa.int64()
    types = dict(
        id=s, prompt=s, route=s, router_score=pa.float64(), model=s, response=s, prompt_tokens=i,
        completion_tokens=i, latency_ms=pa.float64(), truncated=pa.bool_(), status=s, error=s, source=s, run_id=s,
        created_at=pa.timestamp("us", tz="UTC"),
    )
    return pa.schema([(c, types[c]) for c in RESPONSE_COLUMNS])


@dataclass
class PoolStats:
    """One model pool's share of the run."""

    model: str = ""
    rows: int = 0
    ok: int = 0
    failed: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_s: float = 0.0  # Σ generation time over the pool's batches (all actors)
    tokens_per_s: float = 0.0  # completion tokens / busy_s: per-actor generation throughput


@dataclass
class LLMRunSummary:
    """What ``DEST/runs/<run_id>.json`` holds."""

    run_id: str
    source: str
    dest: str
    started_at: str
    router: str = ""
    target_large_share: float = 0.0
    share_mode: str = "calibrated"
    threshold: float | None = None
    status: str = "ok"  # running (while the sink writes) | ok | failed (the run stopped: `error` says why)
    error: str = ""
    finished_at: str = ""
    wall_s: float = 0.0
    ok: int = 0
    failed: int = 0  # rows of this run not answered (input failures and runtime errors)
    retryable: int = 0  # of those, runtime errors: the next run retries them
    skipped: int = 0  # done by an earlier run (resume)
    duplicates: int = 0  # repeated ids in the input, answered once
    routes: dict[str, int] = field(default_factory=dict)  # small / large / none (failed before routing)
    realised_large_share: float | None = None  # large / (small + large) over rows routed in this run
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    bad_shards: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    dest_ok: int = 0  # the destination after this run, every run counted (each id by its latest outcome)
    dest_failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# 1. Pure helpers ----------------------------------------------------------------------------------------------


def _select(batch, route: str):
    """Rows of one route ('' = rows that failed before routing)."""
    keep = batch["route"] == route
    return {k: v[keep] for k, v in batch.items()}


def _unanswered(batch):
    """Rows no model sees (failed on read or routing) get the columns the model stages add."""
    import numpy as np

    n = len(batch["id"])
    batch["response"] = np.full(n, None, dtype=object)
    batch["model"] = np.full(n, None, dtype=object)
    batch["truncated"] = np.zeros(n, dtype=bool)
    for k in ("prompt_tokens", "completion_tokens", "batch_size"):
        batch[k] = np.zeros(n, dtype=np.int64)
    batch["latency_ms"] = np.zeros(n, dtype=np.float64)
    return batch


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


def block_stats(rows: dict[str, list]) -> dict[str, Any]:
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
            reasons[(rows["error"][i] or "").split(";")[0][:80]] += 1
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


def merge_stats(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
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


# 2. The sink --------------------------------------------------------------------------------------------------


class ResponseSink(Datasink):
    """Writes ``responses/*.parquet`` in write tasks; the driver side writes ``runs/<run_id>.json`` (start record,
    then the summary), with the same lifecycle as :class:`pipelines.sinks.ImageSink`."""

    def __init__(self, storage: Storage, summary: LLMRunSummary, ledger=None):
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
        write_failed_summary(self.storage, self.summary, error, self._t0, destination_totals)

    def finish(self, returns: Iterable[dict[str, Any]]) -> LLMRunSummary:
        """Aggregate write-task stats, write the summary JSON; return the summary."""
        s = self.summary
        total = {"ok": 0, "failed": 0, "retryable": 0, "routes": Counter(), "failure_reasons": Counter(), "pools": {}}
        for r in returns:
            if r:
                total = merge_stats(total, r)
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
        s.dest_ok, s.dest_failed = destination_totals(self.storage)  # responses are written: every run counted
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
            stats = block_stats(rows)
            total = stats if total is None else merge_stats(total, stats)
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


def done_ids(storage: Storage) -> set[str]:
    """Ids an earlier run finished: answered, or failed on bad input. Runtime errors are retried (as in the image job)."""
    t = read_responses(storage, ["id", "status"])
    return {i for i, s in outcomes(t["id"].to_pylist(), t["status"].to_pylist()).items() if s in FINAL_STATUSES}


def destination_totals(storage: Storage) -> tuple[int, int]:
    """(ok, not ok) over the destination's ids, every run counted, each id by its latest outcome."""
    t = read_responses(storage, ["id", "status"])
    return outcome_totals(t["id"].to_pylist(), t["status"].to_pylist())


# 3. The run ---------------------------------------------------------------------------------------------------


def run(settings: Settings, src: str, dest: str, run_id: str | None = None) -> LLMRunSummary:
    """Answer every prompt in ``src`` with the small or large model, as the router decides; returns the summary."""
    import ray

    from actors import ledger as ledger_mod
    from actors.llm import LLMActor, check_model_dir
    from actors.router import RouterActor, RouterError, check_share, get_router
    from dynagen.core.raycluster import ensure_ray
    from dynagen.core.sources import read_prompts

    s = settings.llm
    run_id = run_id or new_run_id()

    # 1. Check everything that can fail fast, before answering anything.
    try:
        share = check_share(s.large_share)
    except ValueError as e:
        raise RunError(str(e)) from None
    out = Storage(dest, settings.storage)
    try:
        out.check(create=True)
    except Exception as e:
        raise RunError(str(e)) from None
    try:
        router = get_router(s.router, s.router_path, load_encoder=False)
        threshold = router.threshold(share) if s.share_mode == "calibrated" else None
    except RouterError as e:
        raise RunError(str(e)) from None
    # A pool no row can reach is not started (share 0 or 1): real large models cost minutes to load.
    used = [r for r in ROUTES if not ((r == "large" and share == 0.0) or (r == "small" and share == 1.0))]
    models = {"small": s.small_model, "large": s.large_model}
    for r in used:
        try:
            check_model_dir(models[r])
        except Exception as e:
            raise RunError(f"{r} model: {e}") from None
    shards, bad_shards, fs = check_inputs(settings, src)

    ensure_ray(settings.ray)
    summary = LLMRunSummary(
        run_id=run_id, source=src, dest=out.root, bad_shards=bad_shards, router=s.router, target_large_share=share,
        share_mode=s.share_mode, threshold=None if threshold is None or math.isinf(threshold) else threshold,
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings=settings.model_dump(mode="json", exclude={"storage": {"access_key_id", "secret_access_key"}}),
    )

    # 2. Resume: ids already answered in dest are skipped; repeated ids are answered once.
    ledger = ledger_mod.make_actor(done_ids(out))

    # 3. Read and normalize rows (bad rows become failed rows, they are not dropped).
    ds = read_prompts(shards, fs, s.max_prompt_chars, num_cpus=LIGHT_CPU)
    if s.limit:
        ds = ds.limit(s.limit)
    ds = ds.map_batches(claim_rows, fn_kwargs={"ledger": ledger}, num_cpus=LIGHT_CPU)

    # 4. Route: score every row, send `large_share` of them to the large model.
    ds = ds.map_batches(
        RouterActor,
        fn_constructor_kwargs=dict(name=s.router, path=s.router_path, large_share=share, share_mode=s.share_mode,
                                   num_threads=1),
        batch_size=ROUTER_BATCH, compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), num_cpus=LIGHT_CPU,
    )
    # The two pools and the failed rows each read this; without materializing, every branch would re-run the
    # read and the router. Rows are text only (no model outputs yet), so holding them is cheap.
    ds = ds.materialize()

    # 5. Answer: one actor pool per model, each with its own size and resources.
    branches = []
    for r in used:
        branches.append(
            ds.map_batches(_select, fn_kwargs={"route": r}, num_cpus=LIGHT_CPU).map_batches(
                LLMActor,
                fn_constructor_kwargs=dict(
                    model=models[r], max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                    over_context=s.over_context, max_prompt_tokens=s.max_prompt_tokens, num_threads=max(1, math.ceil(s.cpus_per_actor)),
                ),
                batch_size=s.batch_size * WINDOW_BATCHES,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=s.small_actors_max if r == "small" else s.large_actors_max),
                num_cpus=s.cpus_per_actor,
                num_gpus=s.gpus_per_actor or None,
            )
        )
    branches.append(ds.map_batches(_select, fn_kwargs={"route": ""}, num_cpus=LIGHT_CPU).map_batches(_unanswered, num_cpus=LIGHT_CPU))

    # 6. Write responses and the run summary.
    sink = ResponseSink(out, summary, ledger=ledger)
    try:
        branches[0].union(*branches[1:]).write_datasink(sink, ray_remote_args={"num_cpus": LIGHT_CPU})
    except Exception as e:  # a worker's traceback is long; the user needs the cause and what to do
        sink.fail(e)
        raise RunError(f"run {run_id} failed: {root_cause(e)}; finished work is kept, rerun the same command to resume") from e
    finally:
        ray.kill(ledger)
    return sink.summary


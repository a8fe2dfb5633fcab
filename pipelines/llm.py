"""The batch LLM pipeline: prompt shards → router → small / large model actor pools → storage.

``run(settings, src, dest)`` wires the stages; every stage's resources are set here, not in the actors.
Writes ``DEST/responses/<run_id>-<hash>.parquet`` (one file per write block, named from the block's ids so a
retried write overwrites itself) and ``DEST/runs/<run_id>.json`` (an :class:`LLMRunSummary`), both through
:class:`pipelines.sinks.ResponseSink`, then ``DEST/runs/<run_id>.md`` (prompt, route and answer per row). A rerun skips ids already in ``DEST/responses`` (resume), exactly like the
image job.
"""

from __future__ import annotations

import math

from dynagen.core.records import ROUTES, LLMRunSummary
from dynagen.core.settings import Settings
from dynagen.core.storage import Storage
from pipelines.common import (
    LIGHT_CPU, RunError, check_inputs, claim_rows, new_run_id, nothing_new, now_iso, settings_record, write,
)

ROUTER_BATCH = 256  # rows per router call: big enough to batch the encoder well, small enough to stream
WINDOW_BATCHES = 4  # generation batches per LLM actor call: length-sorting needs a window of rows to sort


# 1. Pure helpers ----------------------------------------------------------------------------------------------


def _select(batch, route: str):
    """Rows of one route ('' = rows that failed before routing)."""
    keep = batch["route"] == route
    return {k: v[keep] for k, v in batch.items()}


def _unanswered(batch, progress=None):
    """Rows no model sees (failed on read or routing) get the columns the model stages add (and count as done)."""
    import numpy as np

    n = len(batch["id"])
    if progress is not None and n:
        from actors.progress import report

        report(progress, "done", batch["id"].tolist(), [False] * n, [0] * n)
    batch["response"] = np.full(n, None, dtype=object)
    batch["model"] = np.full(n, None, dtype=object)
    batch["truncated"] = np.zeros(n, dtype=bool)
    for k in ("prompt_tokens", "completion_tokens", "batch_size"):
        batch[k] = np.zeros(n, dtype=np.int64)
    batch["latency_ms"] = np.zeros(n, dtype=np.float64)
    return batch


# 2. The run ---------------------------------------------------------------------------------------------------


SHARE_TOLERANCE = 0.05  # the router's documented accuracy on unseen prompts: ±5 points


def share_warning(s: LLMRunSummary) -> str | None:
    """One line when this run's realised large share misses the target by more than ``SHARE_TOLERANCE``, else None
    (a calibrated threshold assumes prompts like the router's calibration set)."""
    if s.realised_large_share is None or abs(s.realised_large_share - s.target_large_share) <= SHARE_TOLERANCE:
        return None
    routed = s.routes.get("small", 0) + s.routes.get("large", 0)
    hint = (" (the calibrated threshold fits prompts like the router's calibration set; llm.share_mode: job "
            "sends the target share of this run's prompts)" if s.share_mode == "calibrated" else "")
    return (f"realised large share {100 * s.realised_large_share:.1f}% ({s.routes.get('large', 0)} of {routed}) is "
            f"{100 * abs(s.realised_large_share - s.target_large_share):.1f} points off the target "
            f"{100 * s.target_large_share:.0f}%{hint}")


def run(settings: Settings, src: str, dest: str, run_id: str | None = None, view=None) -> LLMRunSummary:
    """Answer every prompt in ``src`` with the small or large model, as the router decides; returns the summary.

    ``view`` (``pipelines.progress.BarView`` / ``LineView``) shows progress in prompts and tokens/s."""
    import ray

    from actors import ledger as ledger_mod
    from actors.llm import LLMActor, check_model_dir
    from actors.router import RouterActor, RouterError, apply_cut, check_share, get_router, job_cut
    from dynagen.core.raycluster import ensure_ray
    from dynagen.core.sources import read_prompts
    from pipelines.sinks import ResponseSink, read_responses, response_done_ids

    s = settings.llm
    run_id = run_id or new_run_id()

    # 1. Check everything that can fail fast, before answering anything; a local DEST is created only once every
    #    check passed, so a run refused at start leaves nothing behind.
    try:
        share = check_share(s.large_share)
    except ValueError as e:
        raise RunError(str(e)) from None
    out = Storage(dest, settings.storage)
    try:
        out.check()
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
    try:
        out.check(create=True)
    except Exception as e:
        raise RunError(str(e)) from None
    summary = LLMRunSummary(
        run_id=run_id, source=src, dest=out.root, bad_shards=bad_shards, router=s.router, target_large_share=share,
        share_mode=s.share_mode, threshold=None if threshold is None or math.isinf(threshold) else threshold,
        started_at=now_iso(), settings=settings_record(settings),
    )

    # 2. Resume: ids already answered in dest are skipped; repeated ids are answered once. Nothing new: the run is
    #    recorded without starting Ray or a model.
    done = response_done_ids(out)
    counts = nothing_new(shards, fs, s.max_prompt_chars, done, s.limit)
    if counts is not None:
        sink = ResponseSink(out, summary)
        sink.on_write_start()
        summary.skipped, summary.duplicates = counts["done"], counts["duplicate"]
        finished = sink.finish([])
        from pipelines.progress import show_nothing_new

        show_nothing_new(view, shards, s.limit, counts)
        return finished
    ensure_ray(settings.ray)
    ledger = ledger_mod.make_actor(done)
    board = None
    if view is not None:
        from actors.progress import make_actor as make_board
        from pipelines.progress import total_rows

        board = make_board(total_rows(shards, s.limit))

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
    if s.share_mode == "job":
        # 4b. This job's own quantile: the top round(share × n) scores go large, so the realised share holds on any
        #     prompt mix. Needs every row's score first (id + score per row on the driver: ~100 bytes a row).
        scored = ds.select_columns(["id", "router_score", "route"]).to_pandas()
        scored = scored[scored["route"] == "pending"]
        cut = job_cut(scored["router_score"].tolist(), scored["id"].tolist(), share)
        summary.threshold = None if cut is None else float(cut[0])
        ds = ds.map_batches(apply_cut, fn_kwargs={"cut": cut}, num_cpus=LIGHT_CPU).materialize()

    # 5. Answer: one actor pool per model, each with its own size and resources.
    branches = []
    for r in used:
        branches.append(
            ds.map_batches(_select, fn_kwargs={"route": r}, num_cpus=LIGHT_CPU).map_batches(
                LLMActor,
                fn_constructor_kwargs=dict(
                    progress=board, model=models[r], max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                    prompt_format=s.prompt_format, stop=s.stop, cache_dir=s.model_cache_dir,
                    over_context=s.over_context, max_prompt_tokens=s.max_prompt_tokens, num_threads=max(1, math.ceil(s.cpus_per_actor)),
                ),
                batch_size=s.batch_size * WINDOW_BATCHES,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=s.small_actors_max if r == "small" else s.large_actors_max),
                num_cpus=s.cpus_per_actor,
                num_gpus=s.gpus_per_actor or None,
            )
        )
    branches.append(ds.map_batches(_select, fn_kwargs={"route": ""}, num_cpus=LIGHT_CPU)
                    .map_batches(_unanswered, fn_kwargs={"progress": board}, num_cpus=LIGHT_CPU))

    # 6. Write responses and the run summary.
    sink = ResponseSink(out, summary, ledger=ledger)
    poller = None
    if board is not None:
        from pipelines.progress import Poller

        poller = Poller(board, ledger, view)
    try:
        write(branches[0].union(*branches[1:]), sink, run_id, ledger, poller)
    finally:
        if board is not None:
            ray.kill(board)

    # 7. The report a person reads: prompt · route · answer for each row of this run (runs/<run_id>.md).
    from pipelines.report import write_llm_report

    cols = ["id", "prompt", "route", "router_score", "response", "completion_tokens", "status", "error", "run_id"]
    write_llm_report(out, sink.summary, [r for r in read_responses(out, columns=cols).to_pylist() if r["run_id"] == run_id])
    return sink.summary


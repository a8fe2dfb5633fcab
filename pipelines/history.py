"""Run history of a destination: the ``runs/<run_id>.json`` records every run wrote (image and LLM jobs), read
through the storage interface, so a local folder and ``s3://`` read the same. ``dynagen runs list|show`` prints them.
"""

from __future__ import annotations

import json
from typing import Any

from dynagen.core.storage import Storage


class HistoryError(ValueError):
    """No such run, or no runs at all; one line."""


def list_runs(storage: Storage) -> list[dict[str, Any]]:
    """Every run record under ``runs/``, oldest first (by start time, then id). Unreadable records are skipped."""
    runs = []
    for key in storage.list("runs"):
        if not key.endswith(".json"):
            continue
        try:
            rec = json.loads(storage.get_bytes(key))
        except (ValueError, OSError):
            continue
        if isinstance(rec, dict) and "run_id" in rec:
            runs.append(rec)
    return sorted(runs, key=lambda r: (r.get("started_at", ""), r["run_id"]))


def find_run(runs: list[dict[str, Any]], run_id: str | None) -> dict[str, Any]:
    """The run named ``run_id`` (or a unique prefix of it). None: the latest run that did something — a rerun that
    skipped every row has no images or report worth showing — or the latest run if none did."""
    if not runs:
        raise HistoryError("no runs recorded here (no runs/*.json)")
    if run_id is None:
        worked = [r for r in runs if r.get("ok", 0) or r.get("failed", 0) or r.get("status") != "ok"]
        return (worked or runs)[-1]
    hits = [r for r in runs if r["run_id"] == run_id] or [r for r in runs if r["run_id"].startswith(run_id)]
    if len(hits) != 1:
        raise HistoryError(f"run {run_id!r} {'is ambiguous' if hits else 'not found'} "
                           f"({len(runs)} runs; 'dynagen runs list' shows them)")
    return hits[0]


def is_llm(rec: dict[str, Any]) -> bool:
    return "routes" in rec


def _rate(rec: dict[str, Any]) -> str:
    if is_llm(rec):
        wall = rec.get("wall_s") or 0
        return f"{rec.get('ok', 0) / wall:.2f} prompts/s" if wall else "- prompts/s"
    return f"{rec.get('images_per_s', 0.0):.2f} images/s"


def _hist(rec: dict[str, Any]) -> str:
    if is_llm(rec):
        return "routes " + (" ".join(f"{k}×{v}" for k, v in rec.get("routes", {}).items() if v) or "-")
    hist = rec.get("steps_histogram") or {}
    return "steps " + (" ".join(f"{k}×{v}" for k, v in hist.items()) or "-")


def run_line(rec: dict[str, Any]) -> str:
    """One line: id, start, status, ok/failed/skipped, rate, steps histogram (routes for the LLM job)."""
    started = rec.get("started_at", "")[:19].replace("T", " ")
    counts = f"{rec.get('ok', 0)} ok / {rec.get('failed', 0)} failed / {rec.get('skipped', 0)} skipped"
    return "  ".join([rec["run_id"], started, f"{rec.get('status', '?'):<7}", counts, _rate(rec), _hist(rec)])


def run_details(rec: dict[str, Any], storage: Storage) -> list[str]:
    """The summary as ``key: value`` lines, for ``dynagen runs show``."""
    out = [f"run: {rec['run_id']} ({'llm' if is_llm(rec) else 'images'})", f"status: {rec.get('status', '?')}"]
    if rec.get("error"):
        out.append(f"error: {rec['error']}")
    out += [f"started: {rec.get('started_at', '')}   finished: {rec.get('finished_at', '') or '-'}",
            f"source: {rec.get('source', '')}",
            f"rows: {rec.get('ok', 0)} ok, {rec.get('failed', 0)} failed ({rec.get('retryable', 0)} retryable), "
            f"{rec.get('skipped', 0)} skipped, {rec.get('duplicates', 0)} duplicate ids",
            f"time: {rec.get('wall_s', 0.0):.1f} s, {_rate(rec)}"]
    if is_llm(rec):
        out.append(f"{_hist(rec)}; large share {rec.get('realised_large_share')} (target {rec.get('target_large_share')})")
        for route, p in rec.get("pools", {}).items():
            out.append(f"  {route}: {p.get('model', '')} · {p.get('completion_tokens', 0)} tokens · "
                       f"{p.get('tokens_per_s', 0.0):.1f} tokens/s")
    else:
        out.append(f"compute: {rec.get('denoising_steps', 0)} denoising steps, {rec.get('unet_evals', 0)} UNet "
                   f"evaluations, {rec.get('batches', 0)} batches, fill {100 * rec.get('mean_batch_fill', 0.0):.0f}%")
        out.append(_hist(rec))
        for k, v in (rec.get("steps_breakdown") or {}).items():
            noun = "image" if v["images"] == 1 else "images"
            out.append(f"  {k:>4} steps: {v['images']} {noun}, {v['mean_ms_per_image']:.1f} ms/image, "
                       f"{100 * v['unet_share']:.1f}% of UNet evaluations")
        if rec.get("predicted_steps_histogram"):
            out.append("predicted " + " ".join(f"{k}×{v}" for k, v in rec["predicted_steps_histogram"].items()))
        fixed = rec.get("settings", {}).get("images", {}).get("steps", "auto") != "auto"
        stepsaver = "none (fixed steps)" if fixed else f"sha256 {rec.get('stepsaver_fingerprint') or 'not recorded'}"
        out.append(f"made from: model sha256 {rec.get('model_fingerprint') or 'not recorded'}, StepSaver {stepsaver}")
    if rec.get("failure_reasons"):
        out.append("failures: " + "; ".join(f"{k} ×{v}" for k, v in rec["failure_reasons"].items()))
    for b in rec.get("bad_shards", []):
        out.append(f"skipped shard {b['shard']}: {b['error']}")
    out.append(f"destination after this run: {rec.get('dest_ok', 0)} ok, {rec.get('dest_failed', 0)} not ok")
    rid = rec["run_id"]
    out.append(f"summary: {storage.uri(f'runs/{rid}.json')}")
    if not is_llm(rec):
        out.append(f"report: {storage.uri(f'runs/{rid}.html')}")
    return out

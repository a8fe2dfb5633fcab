"""The LLM job end to end on the real embedded pair: routed (share 0.3) vs all-large vs all-small.

    python bench/llm_pair.py [--n 200] [--max-new-tokens 24] [--out bench/results/llm_pair] [--smoke-test]

Small = SmolLM2-135M-Instruct (``gguf:smollm2-135m-instruct``), large = Gemma 3 270M (``gguf:gemma3-270m``), both from
their PyPI wheels, dequantised once into the user cache (``actors/gguf.py``). Prompts: the 40 everyday prompts of
``examples/llm_prompts.jsonl``, then MMLU questions from ``../shared/data/routing/`` (when present) up to ``--n``.
Each configuration is one ``pipelines.llm.run`` into its own folder under ``out/bench-llm-pair/`` (responses Parquet,
run summary JSON, the readable ``runs/<run_id>.md``); this script writes their figures to ``llm_pair.json`` and copies
the routed run's report beside it.

Also measures, with the router alone (no LLM), how the ``calibrated`` share mode drifts from its target on prompt
mixes unlike the router's MMLU calibration set, next to the ``job`` mode on the same mixes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHAT_PROMPTS = REPO / "examples" / "llm_prompts.jsonl"
MMLU = REPO.parent / "shared" / "data" / "routing" / "mmlu_routing_train.parquet"
# (label, large share): the routed job and the two single-model baselines. Share 0 / 1 start only one pool.
CONFIGS = (("routed", 0.3), ("all_large", 1.0), ("all_small", 0.0))
# Generation: 24 new tokens answer the short prompts (MMLU answers are one letter plus a few words) and keep the
# three runs within minutes on 2 busy cores; 8 prompts per batch (left-padded, length-sorted).
MAX_NEW_TOKENS, BATCH_SIZE = 24, 8
# The job's default 0.5 CPU per actor (1 torch thread each): on 2 cores the routed run's two pools work side by side
# and the read/select tasks still get scheduled (0.9 each left Ray Data's budget no room for them: a deadlock).
CPUS_PER_ACTOR = 0.5
DRIFT_SHARES = (0.1, 0.3, 0.5)
SMOKE_N, SMOKE_TOKENS = 12, 4


def load_prompts(n: int) -> list[dict]:
    """The everyday prompts first, then MMLU questions (a fixed, evenly spread slice) up to ``n``."""
    rows = [json.loads(line) for line in CHAT_PROMPTS.read_text().splitlines() if line.strip()]
    rows = rows[:n]
    if len(rows) < n and MMLU.is_file():
        import pyarrow.parquet as pq

        mmlu = pq.read_table(MMLU, columns=["prompt"]).column("prompt").to_pylist()
        step = max(1, len(mmlu) // (n - len(rows)))
        rows += [{"id": f"mmlu-{i:05d}", "prompt": mmlu[i]} for i in range(0, len(mmlu), step)][: n - len(rows)]
    return rows


def calibrated_drift(router_name: str = "learned") -> dict:
    """Realised large share of ``calibrated`` vs ``job`` on three mixes: everyday prompts, MMLU, and half-half."""
    import numpy as np

    from actors.router import get_router, job_cut, goes_large

    router = get_router(router_name)
    chat = [json.loads(line)["prompt"] for line in CHAT_PROMPTS.read_text().splitlines() if line.strip()]
    mixes = {"everyday (examples/llm_prompts.jsonl)": chat}
    if MMLU.is_file():
        mmlu = load_prompts(len(chat) + 400)[len(chat):]
        mixes["MMLU (400 from the training file)"] = [r["prompt"] for r in mmlu]
        mixes["half everyday, half MMLU"] = chat + [r["prompt"] for r in mmlu[: len(chat)]]
    out = {}
    for name, prompts in mixes.items():
        scores = np.asarray(router.score(prompts))
        ids = [str(i) for i in range(len(prompts))]
        row = {"prompts": len(prompts)}
        for share in DRIFT_SHARES:
            cut = job_cut(scores, ids, share)
            row[str(share)] = {
                "calibrated": round(float(np.mean(scores >= router.threshold(share))), 4),
                "job": round(float(np.mean([goes_large(s, i, cut) for s, i in zip(scores, ids)])), 4),
            }
        out[name] = row
        print(f"{name}: " + ", ".join(f"target {s}: calibrated {row[str(s)]['calibrated']:.3f} / job {row[str(s)]['job']:.3f}"
                                      for s in DRIFT_SHARES), flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="Prompts per run.")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "llm_pair"))
    p.add_argument("--runs-dir", default=str(REPO / "out" / "bench-llm-pair"), help="Where each run's folder goes.")
    p.add_argument("--skip-drift", action="store_true", help="Skip the calibrated-vs-job share measurement.")
    p.add_argument("--smoke-test", action="store_true", help=f"{SMOKE_N} prompts, {SMOKE_TOKENS} tokens.")
    a = p.parse_args(argv)
    n, max_new = (SMOKE_N, SMOKE_TOKENS) if a.smoke_test else (a.n, a.max_new_tokens)

    from actors import gguf
    from dynagen.core.settings import load_settings
    from pipelines.llm import run

    out, runs_dir = Path(a.out), Path(a.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "prompts": n, "max_new_tokens": max_new, "batch_size": BATCH_SIZE, "cpus_per_actor": CPUS_PER_ACTOR,
        "smoke_test": a.smoke_test, "cpus_visible": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "models": {},
    }
    for role, model in (("small", gguf.SMALL), ("large", gguf.LARGE)):
        path, digest = gguf.locate(model)
        t0 = time.perf_counter()
        gguf.materialize(model)  # the one-time conversion, timed apart from the runs (0 s when cached)
        report["models"][role] = {"model": model, "gguf": path.name, "sha256": digest[:16],
                                  "convert_or_cache_s": round(time.perf_counter() - t0, 1)}

    if not a.skip_drift:
        report["share_drift"] = calibrated_drift()

    src = runs_dir / "prompts.jsonl"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_text("".join(json.dumps(r) + "\n" for r in load_prompts(n)))
    report["runs"] = {}
    for label, share in CONFIGS:
        dest = runs_dir / label
        shutil.rmtree(dest, ignore_errors=True)  # a fresh run each time (the job would resume otherwise)
        settings = load_settings(None, {
            "llm.small_model": gguf.SMALL, "llm.large_model": gguf.LARGE, "llm.large_share": share,
            "llm.share_mode": "job", "llm.max_new_tokens": max_new, "llm.batch_size": BATCH_SIZE,
            "llm.cpus_per_actor": CPUS_PER_ACTOR,
        }, env={})[0]
        t0 = time.perf_counter()
        s = run(settings, str(src), str(dest))
        wall = time.perf_counter() - t0
        report["runs"][label] = {
            "target_large_share": share, "realised_large_share": s.realised_large_share, "routes": s.routes,
            "ok": s.ok, "failed": s.failed, "wall_s": round(wall, 1), "job_wall_s": s.wall_s,
            "pools": {r: {k: p.get(k) for k in ("model", "rows", "completion_tokens", "busy_s", "tokens_per_s")}
                      for r, p in s.pools.items()},
            "run": f"{runs_dir.name}/{label}/runs/{s.run_id}.json",
        }
        print(f"{label}: {s.ok} ok, {s.failed} failed, large share {s.realised_large_share} (target {share}), "
              f"{wall:.1f}s wall, " + ", ".join(f"{r} {p['tokens_per_s']} tok/s" for r, p in s.pools.items()), flush=True)
        if label == "routed":
            shutil.copyfile(dest / "runs" / f"{s.run_id}.md", out / "routed_report.md")
    report["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    (out / "llm_pair.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'llm_pair.json'} and {out / 'routed_report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

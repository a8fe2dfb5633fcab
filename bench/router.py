"""Router benchmark: RouteLLM's metrics for every registered router on the held-out MMLU validation split.

    python bench/router.py [--data ../shared/data/routing/mmlu_routing_train.parquet] [--out bench/results/router]
                           [--smoke-test]

For each router in ``actors.router.ROUTERS``: APGR (average performance gap recovered over large-model share
0-100 %), CPT(50%) and CPT(80%) (large-model share needed to recover 50 % / 80 % of the weak→strong gap), the share
needed for 95 % of the strong model's accuracy (RouteLLM's headline MMLU figure), and router cost per prompt
(wall and process-CPU time, batched, in this process). Writes ``router.json`` and a PGR-vs-share plot
``router_pgr.png``. Validation rows = ``holdout_split`` of the training file (never trained on).

    python bench/router.py --cv [--folds 4 --repeats 3] [--cache-dir DIR]

``--cv``: the figure that predicts unseen prompts. The single validation split flatters the router (one draw of
~2.4k rows, and the recipe was tuned on it): repeated k-fold cross-validation over the whole training file refits the
heads per fold (``pipelines.training.router.cross_validate``), with folds cut by prompt (as the unseen 30 % of MMLU
was) and by passage (questions sharing their first 150 characters stay together). Writes ``router_cv.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_DATA = REPO.parent / "shared" / "data" / "routing" / "mmlu_routing_train.parquet"
# Timing: one warm-up batch (first-call allocations), then this many prompts in router batches of ROUTER_BATCH, the
# batch size the pipeline's router stage uses.
TIMING_PROMPTS = 512
ROUTER_BATCH = 256
SMOKE_ROWS = 64  # --smoke-test: a slice of the validation split, enough to exercise every code path
TARGET_SHARES = (0.1, 0.2, 0.3, 0.5, 0.7)  # realised-share check on the validation rows not used for calibration
PLOT_SIZE = (720, 480)
COLORS = {"random": (150, 150, 150), "probe": (31, 119, 180), "learned": (214, 39, 40)}


def plot_pgr(curves: dict[str, tuple], path: Path) -> None:
    """PGR vs large-model share, one line per router, with PIL (no plotting dependency)."""
    from PIL import Image, ImageDraw

    w, h = PLOT_SIZE
    left, right, top, bottom = 60, 20, 30, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    ymin, ymax = -0.2, 1.4

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + x * (w - left - right), top + (ymax - min(max(y, ymin), ymax)) / (ymax - ymin) * (h - top - bottom)

    for v in (0.0, 0.5, 1.0):
        d.line([xy(0, v), xy(1, v)], fill=(225, 225, 225))
        d.text((8, xy(0, v)[1] - 6), f"{v:.1f}", fill="black")
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        d.line([xy(v, ymin), xy(v, ymax)], fill=(235, 235, 235))
        d.text((xy(v, 0)[0] - 10, h - bottom + 8), f"{int(100 * v)}%", fill="black")
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    d.text((left, 8), "PGR vs share of large-model calls (MMLU validation split)", fill="black")
    d.text((w // 2 - 60, h - 22), "large-model share", fill="black")
    for k, (name, (shares, pgr)) in enumerate(curves.items()):
        step = max(1, len(shares) // 400)
        pts = [xy(float(x), float(y)) for x, y in zip(shares[::step], pgr[::step])]
        color = COLORS.get(name, (44, 160, 44))
        d.line(pts, fill=color, width=2)
        d.text((w - right - 130, top + 10 + 16 * k), f"- {name}", fill=color)  # default PIL font: ASCII only
    img.save(path)


def time_router(router, prompts: list[str]) -> dict[str, float]:
    """Wall and process-CPU milliseconds per prompt, scoring in ROUTER_BATCH batches after one warm-up batch."""
    router.score(prompts[:ROUTER_BATCH])
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(prompts), ROUTER_BATCH):
        router.score(prompts[s : s + ROUTER_BATCH])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_ms_per_prompt": round(1000 * wall / len(prompts), 3), "cpu_ms_per_prompt": round(1000 * cpu / len(prompts), 3)}


def run_cv(a) -> int:
    """``--cv``: repeated k-fold CV of the learned and probe routers, folds by prompt and by passage."""
    import numpy as np
    import torch

    from pipelines.training.router import CV_FOLDS, CV_REPEATS, cross_validate, embed, load_labels

    torch.set_num_threads(a.threads)
    t = load_labels(a.data)
    n = SMOKE_ROWS * 8 if a.smoke_test else len(t["prompt"])
    prompts, subject = t["prompt"][:n], t["subject"][:n]
    weak = np.asarray(t["weak_correct"][:n], dtype=float)
    strong = np.asarray(t["strong_correct"][:n], dtype=float)
    folds, repeats = a.folds or CV_FOLDS, a.repeats or (1 if a.smoke_test else CV_REPEATS)
    t0 = time.perf_counter()
    emb = embed(prompts, a.cache_dir)
    report = {"data": Path(a.data).name, "rows": n, "folds": folds, "repeats": repeats, "smoke_test": a.smoke_test,
              "weak_accuracy": round(float(weak.mean()), 4), "strong_accuracy": round(float(strong.mean()), 4),
              "encode_s": round(time.perf_counter() - t0, 1), "cv": {}}
    for group in ("prompt", "passage"):
        res = cross_validate(emb, prompts, subject, weak, strong, folds=folds, repeats=repeats, group=group)
        report["cv"][group] = res
        for name, m in res.items():
            print(f"folds by {group:7s} {name:8s} APGR {m['apgr_mean']:.3f} ± {m['apgr_sd']:.3f} "
                  f"(min {min(m['apgr_folds']):.3f}, max {max(m['apgr_folds']):.3f})  CPT(50%) {m['cpt50_mean']:.3f} ± "
                  f"{m['cpt50_sd']:.3f}  CPT(80%) {m['cpt80_mean']:.3f}  [{m['folds']} folds of ~{m['rows_per_fold']} rows]",
                  flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "router_cv.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'router_cv.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--router-path", default=str(REPO / "models" / "router"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "router"))
    p.add_argument("--threads", type=int, default=2, help="torch threads (the budget the overhead target assumes).")
    p.add_argument("--smoke-test", action="store_true", help=f"{SMOKE_ROWS} validation rows, few timing prompts.")
    p.add_argument("--cv", action="store_true", help="Repeated k-fold cross-validation instead (see above).")
    p.add_argument("--folds", type=int, default=None, help="CV folds (default pipelines.training.router.CV_FOLDS).")
    p.add_argument("--repeats", type=int, default=None, help="CV repeats (default CV_REPEATS).")
    p.add_argument("--cache-dir", default=None, help="Cache prompt embeddings here (the CV encodes all 9.7k prompts).")
    a = p.parse_args(argv)
    if a.cv:
        return run_cv(a)

    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from actors.router import ROUTERS, LearnedRouter, calibration_split, get_router, holdout_split, pgr_curve, route_metrics

    torch.set_num_threads(a.threads)
    t = pq.read_table(a.data).to_pydict()
    val = holdout_split(t["prompt"])
    idx = np.nonzero(val)[0]
    if a.smoke_test:
        idx = idx[:SMOKE_ROWS]
    prompts = [t["prompt"][i] for i in idx]
    weak = np.array([t["weak_correct"][i] for i in idx], dtype=float)
    strong = np.array([t["strong_correct"][i] for i in idx], dtype=float)
    held = ~calibration_split(prompts)  # rows the stored thresholds were not fitted on
    n_time = SMOKE_ROWS if a.smoke_test else TIMING_PROMPTS

    results, curves, embeddings = {}, {}, {}
    for name in sorted(ROUTERS, key=lambda n: (n != "random", n)):
        router = get_router(name, a.router_path)
        t0 = time.perf_counter()
        if isinstance(router, LearnedRouter):
            # learned and probe share one encoder: encode the validation prompts once (timing below is per router).
            key = json.dumps(router.config.to_json()["encoder"], sort_keys=True)
            if key not in embeddings:
                embeddings[key] = router.encoder.encode(prompts)
            scores = router.score_embeddings(embeddings[key])
        else:
            scores = np.asarray(router.score(prompts))
        m = route_metrics(scores, weak, strong)
        m["score_s"] = round(time.perf_counter() - t0, 2)
        m.update(time_router(router, (prompts * (1 + n_time // max(1, len(prompts))))[:n_time]))
        m["realised_share"] = {
            str(share): round(float(np.mean(scores[held] >= router.threshold(share))), 4) for share in TARGET_SHARES
        }
        results[name] = m
        curves[name] = pgr_curve(scores, weak, strong)
        print(f"{name:8s} APGR {m['apgr']:.3f}  CPT(50%) {m['cpt50']:.3f}  CPT(80%) {m['cpt80']:.3f}  "
              f"95%-of-strong at {100 * m['share_for_95pct_strong']:.0f}% large  "
              f"{m['wall_ms_per_prompt']:.2f} ms/prompt wall, {m['cpu_ms_per_prompt']:.2f} ms CPU", flush=True)

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "data": str(a.data), "validation_rows": int(len(idx)), "smoke_test": a.smoke_test,
        "weak_accuracy": round(float(weak.mean()), 4), "strong_accuracy": round(float(strong.mean()), 4),
        "threads": a.threads, "cpus_visible": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
        "machine": platform.processor() or platform.machine(), "routers": results,
    }
    (out / "router.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_pgr(curves, out / "router_pgr.png")
    print(f"wrote {out / 'router.json'} and {out / 'router_pgr.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

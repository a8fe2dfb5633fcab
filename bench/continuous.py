"""Continuous vs grouped batching on the same rows, side by side in one process (no Ray, one diffusion core each).

Rows: the demo's prompts (``examples/prompts.jsonl``) with the step counts the committed StepSaver predicts for them
(a realistic mix of counts), one seed each. Both modes run the same rows with the same ``batch_size``:

* **grouped** (``actors/diffusion.py``): batches of one step count, so a window of K distinct counts leaves part-empty
  batches;
* **continuous** (``actors/continuous.py``): one active set of ``batch_size`` samples on their own counts, a finished
  sample's slot refilled at the next UNet call.

And again with **adaptive steps** (``--adaptive``, the per-sample rule that pays on this model: each row's count is its
cap, its steps follow its own trajectory): grouped adaptive fills a batch with rows of any count, but a sample that
settles early leaves its slot empty until the batch's last sample ends; continuous adaptive refills it at the next call.
And with **early stopping** (``--early-stop``, the learned signal): a converged sample leaves; grouped, its slot stays
empty until its one-count batch ends; continuous, a waiting sample takes it at the next call.

Reported per mode: wall time and images/s, UNet *calls* (forward passes; the sample-evaluations are the same in both
modes, Σ steps × 2), mean fill of a call (sample-evaluations ÷ calls ÷ 2·batch_size) — for continuous modes also the
steady-state fill (the calls made while rows were still waiting) and the drain (calls after the last row joined, where
the last samples finish one by one: a fixed cost per window of rows, so a small window's mean fill is lower) —, and
the largest pixel difference between the two modes' images (same seed and count ⇒ ≤ 1/255 expected). The modes
alternate over ``--repeats`` rounds (grouped, continuous, grouped, …) and the medians are reported, so a load change
on a shared machine hits both.

    python -m bench.continuous                   # 48 demo prompts, batch 8, 3 rounds, fixed/adaptive/early stop: ~3 min idle
    python -m bench.continuous --smoke-test      # 8 prompts at ≤ 6 steps, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "models/tiny-sd"
STEPSAVER = "models/stepsaver"
PROMPTS = "examples/prompts.jsonl"
BATCH_SIZE = 8  # the job's default images.batch_size
OUT = "bench/results/continuous.json"
# name -> DiffusionCore arguments; pairs compared: (grouped, continuous) and (grouped+adaptive, continuous+adaptive)
SIGNAL = "models/early-stop"  # the learned early-stop signal (images.early_stop_signal's default)
MODES = {"grouped": {"batching": "grouped"}, "continuous": {"batching": "continuous"},
         "grouped+adaptive": {"batching": "grouped", "adaptive": True},
         "continuous+adaptive": {"batching": "continuous", "adaptive": True},
         "grouped+early-stop": {"batching": "grouped", "early_stop": True, "early_stop_signal": SIGNAL},
         "continuous+early-stop": {"batching": "continuous", "early_stop": True, "early_stop_signal": SIGNAL}}
PAIRS = (("grouped", "continuous"), ("grouped+adaptive", "continuous+adaptive"),
         ("grouped+early-stop", "continuous+early-stop"))


class CallCounter:
    """Forward passes of a module (one per UNet call, whatever its batch)."""

    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def rows_for(prompts: list[str], steps: list[int]) -> dict[str, list]:
    n = len(prompts)
    return {"id": [f"r{i}" for i in range(n)], "prompt": list(prompts), "negative_prompt": [""] * n,
            "seed": list(range(n)), "steps": list(steps), "status": ["ok"] * n, "error": [""] * n}


def run_mode(core, counter, rows) -> dict:
    stats = core.continuous.stats if getattr(core, "continuous", None) is not None else None
    waiting0 = (stats.waiting_ticks, stats.waiting_sample_steps) if stats else (0, 0)
    calls0, evals0, t0 = counter.calls, core.counter.evals, time.perf_counter()
    out = core.run(rows)
    wall = time.perf_counter() - t0
    calls, evals = counter.calls - calls0, core.counter.evals - evals0
    assert all(s == "ok" for s in out["status"]), out["error"]
    res = {"wall_s": wall, "unet_calls": calls, "unet_evals": evals, "steps": list(out["steps"]),
           "fill": evals / max(1, calls) / (2 * core.batch_size), "images": out["image"]}
    if stats:  # continuous: the fill while rows were waiting (steady state), and how many calls were the drain
        ticks = stats.waiting_ticks - waiting0[0]
        res["steady_fill"] = (stats.waiting_sample_steps - waiting0[1]) / (ticks * core.batch_size) if ticks else None
        res["drain_calls"] = calls - ticks
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--stepsaver", default=STEPSAVER)
    ap.add_argument("--prompts", default=PROMPTS)
    ap.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--fixed-only", action="store_true", help="fixed step counts only (the first pair)")
    ap.add_argument("--smoke-test", action="store_true")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from PIL import Image

    from actors.diffusion import DiffusionCore
    from actors.stepsaver import StepPredictor
    from dynagen.core.records import model_fingerprint

    torch.set_num_threads(a.threads)
    prompts = [json.loads(line)["prompt"] for line in Path(a.prompts).read_text().splitlines() if line.strip()]
    steps = StepPredictor.load(a.stepsaver, num_threads=1).predict_steps(prompts)
    if a.smoke_test:
        prompts, steps, a.repeats = prompts[:8], [2 + i % 5 for i in range(8)], 1
    rows = rows_for(prompts, steps)
    pairs = PAIRS[:1] if a.fixed_only else PAIRS
    cores = {m: DiffusionCore(a.model, "ddim", batch_size=a.batch_size, num_threads=a.threads, **MODES[m])
             for pair in pairs for m in pair}
    counters = {m: CallCounter(c.pipe.unet) for m, c in cores.items()}
    results: dict[str, list[dict]] = {m: [] for m in cores}
    for r in range(a.repeats):
        for m in cores:
            results[m].append(run_mode(cores[m], counters[m], rows))
            print(f"[round {r + 1}] {m:<19} {results[m][-1]['wall_s']:6.1f}s  calls {results[m][-1]['unet_calls']}",
                  flush=True)
    decode = lambda b: np.asarray(Image.open(__import__("io").BytesIO(b)), dtype=int)  # noqa: E731
    diff = {f"{x}|{y}": max(int(np.abs(decode(i) - decode(j)).max())
                            for i, j in zip(results[x][0]["images"], results[y][0]["images"])) for x, y in pairs}
    summary = {}
    for m, rs in results.items():
        wall = float(np.median([x["wall_s"] for x in rs]))
        summary[m] = {"wall_s": round(wall, 2), "images_per_s": round(len(prompts) / wall, 2),
                      "unet_calls": rs[0]["unet_calls"], "unet_evals": rs[0]["unet_evals"],
                      "mean_steps": round(float(np.mean(rs[0]["steps"])), 2),
                      "mean_call_fill": round(rs[0]["fill"], 3), "wall_s_rounds": [round(x["wall_s"], 2) for x in rs]}
        if "steady_fill" in rs[0]:
            steady = rs[0]["steady_fill"]
            summary[m].update(steady_fill=None if steady is None else round(steady, 3),
                              drain_calls=rs[0]["drain_calls"])
    ratios = {}
    for x, y in pairs:
        g, c = summary[x], summary[y]
        ratios[f"{y} vs {x}"] = {"unet_calls": round(c["unet_calls"] / g["unet_calls"], 3),
                                 "wall": round(c["wall_s"] / g["wall_s"], 3),
                                 "images_per_s": round(c["images_per_s"] / g["images_per_s"], 3)}
    result = {
        "config": {"model": Path(a.model).name, "model_unet_sha256": model_fingerprint(a.model),
                   "prompts": Path(a.prompts).name, "rows": len(prompts), "batch_size": a.batch_size,
                   "threads": a.threads, "repeats": a.repeats, "scheduler": "ddim", "smoke_test": a.smoke_test},
        "steps_histogram": {str(k): int(v) for k, v in zip(*np.unique(steps, return_counts=True))},
        "modes": summary,
        "ratios": ratios,
        "max_pixel_diff": diff,
    }
    print(f"{len(prompts)} rows, steps {result['steps_histogram']}, batch {a.batch_size}")
    for m, s in summary.items():
        print(f"{m:<20} {s['wall_s']:7.1f}s {s['images_per_s']:6.2f} img/s  {s['unet_calls']:5d} UNet calls  "
              f"{s['unet_evals']:5d} evals  fill {100 * s['mean_call_fill']:.0f}%  mean steps {s['mean_steps']}"
              + (f"  (steady {100 * s['steady_fill']:.0f}%, {s['drain_calls']} drain calls)"
                 if s.get("steady_fill") else ""))
    for (name, r), d in zip(ratios.items(), diff.values()):
        print(f"{name}: UNet calls {r['unet_calls']:.2f}×, wall {r['wall']:.2f}×, images/s {r['images_per_s']:.2f}×; "
              f"max pixel diff {d}/255")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Online-app benchmark: closed-loop HTTP load from 127.0.0.1 against a local Ray Serve app (``dynagen.app.serve.deployments``).

  (1) ``/v1/steps``: STEPS_CLIENTS concurrent clients, one prompt per request, each client sending its next request
      as soon as the last one returns; p50/p90/p99 latency and requests/s. Targets: p50 ≤ 20 ms, p99 ≤ 100 ms.
  (2) ``/v1/images``: the same closed-loop load twice, side by side — step-count batching (``max_batch_size`` =
      IMAGE_BATCH_SIZE) vs ``max_batch_size=1`` — images/s, latency, batch sizes seen (from response headers).

Models: ``models/tiny-sd`` and ``models/stepsaver`` when present; otherwise a random tiny pipeline of the same
architecture (same compute per step) and a tiny StepSaver trained here on a few captions (recorded in the JSON).
Router: ``random`` (no artifact needed; routing is not timed here).

    python -m bench.serve                 # full run (~5 min on 2 cores)
    python -m bench.serve --smoke-test    # a minute; small counts, fixed small step counts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiny-sd"
STEPSAVER = REPO / "models" / "stepsaver"
STEPS_CLIENTS = 16  # the target load
STEPS_REQUESTS = 800  # ≥ 100 samples per percentile point around p99 would need 10k; 800 keeps the run ~1 min
STEPS_WARMUP = 32  # first requests pay replica warm-up (tokenizer caches, torch allocations): not timed
IMAGE_CLIENTS = 8  # = IMAGE_BATCH_SIZE: enough concurrent requests to fill a batch of one step count
IMAGE_REQUESTS = 48  # 6 full batches per mode; each image is tens of UNet evals on 2 cores
IMAGE_BATCH_SIZE = 8  # the serve default (settings.serve.max_batch_size)
IMAGE_WAIT_S = 0.05  # the serve default: short enough to add little latency at low load
SMOKE = {"steps_requests": 48, "steps_warmup": 8, "image_requests": 8, "image_steps": [2, 3]}
TARGETS = {"steps_p50_ms": 20.0, "steps_p99_ms": 100.0}
PROMPT_SEED = 77_001  # example_prompts seed for load prompts (distinct prompts: no help from de-duplication)
TRAIN_GRID = [4, 8, 16, 32]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def models(tmp: Path, model: Path = MODEL, stepsaver: Path = STEPSAVER) -> dict[str, str]:
    """Model folders to serve: the trained ones, or stand-ins built here (named in the output)."""
    from dynagen.world.synth import example_prompts

    out = {}
    if (model / "model_index.json").is_file():
        out["model"], out["model_kind"] = str(model), "trained tiny-sd"
    else:
        from dynagen.world.tinymodel import build_pipeline

        build_pipeline(seed=0).save_pretrained(tmp / "tiny-random")
        out["model"], out["model_kind"] = str(tmp / "tiny-random"), "random tiny-sd architecture (models/tiny-sd missing)"
    if (stepsaver / "config.json").is_file():
        out["stepsaver"], out["stepsaver_kind"] = str(stepsaver), "trained"
    else:
        from actors.stepsaver import HeadConfig
        from pipelines.training.stepsaver import FitConfig, train_predictor

        prompts = example_prompts(24, 5)
        labels = [TRAIN_GRID[min(3, p.count(" and ") + ("striped" in p) + ("dotted" in p))] for p in prompts]
        pred, _ = train_predictor(prompts, labels, TRAIN_GRID, folds=2, fit=FitConfig(epochs=100),
                                  head=HeadConfig(hidden=16), num_threads=1)
        out["stepsaver"] = str(pred.save(tmp / "stepsaver"))
        out["stepsaver_kind"] = "tiny stand-in trained by the bench (models/stepsaver missing)"
    return out


async def closed_loop(url: str, bodies: list[dict], clients: int) -> tuple[list[float], list[dict], float]:
    """Send ``bodies`` with ``clients`` concurrent loops; returns latencies (ms), response headers, wall seconds."""
    import aiohttp

    queue = list(enumerate(bodies))
    lat: list[float] = [0.0] * len(bodies)
    heads: list[dict] = [{}] * len(bodies)

    async def client(session):
        while queue:
            i, body = queue.pop()
            t0 = time.perf_counter()
            async with session.post(url, json=body) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status}: {(await r.text())[:200]}")
                heads[i] = {k.lower(): v for k, v in r.headers.items()}  # HTTP header names are case-insensitive
            lat[i] = (time.perf_counter() - t0) * 1000

    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return lat, heads, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke-test", action="store_true", help="small counts, fixed small step counts")
    ap.add_argument("--model", default=str(MODEL), help="diffusers folder (missing: a random tiny-sd stand-in)")
    ap.add_argument("--stepsaver", default=str(STEPSAVER), help="StepSaver folder (missing: a tiny stand-in)")
    ap.add_argument("--out", default=str(REPO / "out" / "bench" / "serve.json"))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from dynagen.app.serve.deployments import start
    from dynagen.app.serve.api import H_BATCH_SIZE, H_STEPS, Percentiles
    from dynagen.core.settings import load_settings
    from dynagen.world.synth import example_prompts

    smoke = a.smoke_test
    n_steps = SMOKE["steps_requests"] if smoke else STEPS_REQUESTS
    n_warm = SMOKE["steps_warmup"] if smoke else STEPS_WARMUP
    n_img = SMOKE["image_requests"] if smoke else IMAGE_REQUESTS
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    result: dict = {"bench": "serve", "smoke_test": smoke, "python": sys.version.split()[0],
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "targets": TARGETS}

    # 1. Models and the app (one replica each: 2 cores; 1 CPU reserved per replica sets its torch threads)
    found = models(tmp, Path(a.model), Path(a.stepsaver))
    result["models"] = found
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray"))
    base = {"images.model": found["model"], "images.stepsaver": found["stepsaver"], "llm.router": "random",
            "serve.port": free_port(), "serve.app_name": "bench", "serve.ingress_num_cpus": 1.0,
            "serve.images_num_cpus": 1.0, "serve.ingress_max_replicas": 1, "serve.images_max_replicas": 1,
            "serve.batch_wait_timeout_s": IMAGE_WAIT_S}
    try:
        settings, _ = load_settings(overrides={**base, "serve.max_batch_size": IMAGE_BATCH_SIZE}, env={})
        t0 = time.perf_counter()
        url = start(settings)
        result["startup_s"] = round(time.perf_counter() - t0, 1)

        # 2. /v1/steps at STEPS_CLIENTS concurrent clients, distinct prompts
        prompts = list(dict.fromkeys(example_prompts(n_steps * 3, PROMPT_SEED)))
        prompts = (prompts * (1 + (n_steps + n_warm) // len(prompts)))[: n_steps + n_warm]
        asyncio.run(closed_loop(url + "/v1/steps", [{"prompts": [p]} for p in prompts[:n_warm]], STEPS_CLIENTS))
        lat, _, wall = asyncio.run(closed_loop(url + "/v1/steps", [{"prompts": [p]} for p in prompts[n_warm:]],
                                               STEPS_CLIENTS))
        s = Percentiles(lat).summary()
        result["steps"] = {"clients": STEPS_CLIENTS, **s, "requests_per_s": round(len(lat) / wall, 1),
                           "meets_p50": s["p50_ms"] <= TARGETS["steps_p50_ms"],
                           "meets_p99": s["p99_ms"] <= TARGETS["steps_p99_ms"]}
        print(json.dumps({"steps": result["steps"]}), flush=True)

        # 3. /v1/images: batched by step count vs max_batch_size=1, same requests
        img_prompts = example_prompts(n_img, PROMPT_SEED + 1)
        if smoke:
            bodies = [{"prompt": p, "seed": i, "steps": SMOKE["image_steps"][i % 2]} for i, p in enumerate(img_prompts)]
        else:
            bodies = [{"prompt": p, "seed": i, "steps": "auto"} for i, p in enumerate(img_prompts)]
        result["images"] = {}
        for label, mbs in (("batched", IMAGE_BATCH_SIZE), ("max_batch_size_1", 1)):
            cfg, _ = load_settings(overrides={**base, "serve.max_batch_size": mbs}, env={})
            start(cfg)  # in-place update of the same app; returns when the new replicas are up
            asyncio.run(closed_loop(url + "/v1/images", bodies[:2], 2))  # warm-up
            lat, heads, wall = asyncio.run(closed_loop(url + "/v1/images", bodies, IMAGE_CLIENTS))
            sizes = Counter(int(h[H_BATCH_SIZE.lower()]) for h in heads)
            result["images"][label] = {"max_batch_size": mbs, "clients": IMAGE_CLIENTS,
                                       "images_per_s": round(len(lat) / wall, 3), **Percentiles(lat).summary(),
                                       "images_by_batch_size": dict(sorted(sizes.items())),
                                       "steps_histogram": dict(sorted(Counter(int(h[H_STEPS.lower()]) for h in heads).items()))}
            print(json.dumps({label: result["images"][label]}), flush=True)
        b, u = result["images"]["batched"]["images_per_s"], result["images"]["max_batch_size_1"]["images_per_s"]
        result["images"]["speedup"] = round(b / u, 2) if u else None
    finally:
        serve.shutdown()
        ray.shutdown()

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

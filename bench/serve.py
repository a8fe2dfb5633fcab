"""Online-app benchmark: closed-loop HTTP load from 127.0.0.1 against a local Ray Serve app (``dynagen.app.serve.deployments``).

  (1) ``/v1/steps``: STEPS_CLIENTS concurrent clients, one prompt per request, each client sending its next request
      as soon as the last one returns; p50/p90/p99 latency and requests/s, **through Serve's HTTP proxy (before) vs
      ``serve.direct_ingress`` (after)**. Ray reads the direct-ingress flag when its processes start, so each variant
      runs in its own subprocess with its own Ray, alternating (proxy, direct, proxy, direct, ...) so both see the same
      machine load. Where the time goes: CPU seconds per request of each process of that Ray (the Gateway replica,
      Serve's proxy, the rest) read from /proc, and the predictor alone (one forward of 1 and of 16 prompts).
      Targets: p50 ≤ 20 ms, p99 ≤ 100 ms.
  (2) ``/v1/images`` at 8 and 16 clients, a mixed step load (IMAGE_STEPS, explicit per request so both modes get the same work):
      ``serve.batching`` grouped (one ``@serve.batch`` queue per step count) vs continuous (one active set), in
      alternating rounds on one Ray — images/s, p50/p99 latency, batch / active-set size seen (response headers).

Models: ``models/tiny-sd`` and ``models/stepsaver`` when present; otherwise a random tiny pipeline of the same
architecture (same compute per step) and a tiny StepSaver trained here on a few captions (recorded in the JSON).
Router: ``random`` (no artifact needed; routing is not timed here). The machine may be shared: compare the variants'
ratios within one run, not figures across runs.

    python -m bench.serve                 # full run (~10 min on 2 cores)
    python -m bench.serve --smoke-test    # a couple of minutes; small counts
    python -m bench.serve --only images   # one part; the other part's figures in the JSON are kept
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from dynagen.app.devservers import free_port

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "tiny-sd"
STEPSAVER = REPO / "models" / "stepsaver"
STEPS_CLIENTS = 16  # the target load
STEPS_REQUESTS = 800  # per round; ≥ 100 samples per percentile point around p99 would need 10k
STEPS_WARMUP = 64  # first requests pay replica warm-up (tokenizer caches, torch allocations): not timed
STEPS_ROUNDS = 2  # per variant, alternating: the machine's load drifts between rounds
IMAGE_CLIENTS = (8, 16)  # the loads for /v1/images: one active set's worth, and twice that
IMAGE_REQUESTS = 64  # per round and mode
IMAGE_ROUNDS = 2  # per mode, alternating
IMAGE_STEPS = [10, 15, 20, 25, 30, 40]  # a spread like StepSaver's on the demo prompts (20-75), kept short for 2 cores
IMAGE_BATCH_SIZE = 8  # the serve default (settings.serve.max_batch_size) = the active set's size when continuous
IMAGE_WAIT_S = 0.05  # the serve default: short enough to add little latency at low load
SMOKE = {"steps_requests": 64, "steps_warmup": 16, "steps_rounds": 1, "image_requests": 8, "image_rounds": 1,
         "image_steps": [2, 3, 4]}
TARGETS = {"steps_p50_ms": 20.0, "steps_p99_ms": 100.0}
PROMPT_SEED = 77_001  # example_prompts seed for load prompts (distinct prompts: no help from de-duplication)
TRAIN_GRID = [4, 8, 16, 32]


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


def shown(found: dict[str, str]) -> dict[str, str]:
    """The models as the JSON records them: paths relative to the checkout, never the machine's absolute paths."""
    return {k: (os.path.relpath(v, REPO) if k in ("model", "stepsaver") and v.startswith(str(REPO)) else
                Path(v).name if k in ("model", "stepsaver") else v) for k, v in found.items()}


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


# 1. Where the time goes: CPU seconds per process of our own Ray (Linux /proc) --------------------------------


def _proc_table() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, process title, CPU seconds)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            title = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        out[int(d)] = (int(f[1]), title, (int(f[11]) + int(f[12])) / tick)
    return out


def cpu_by_role(root: int) -> dict[str, float]:
    """CPU seconds so far of ``root`` and every process under it (its Ray), summed by role."""
    table = _proc_table()
    mine, todo = set(), [root]
    while todo:
        p = todo.pop()
        mine.add(p)
        todo += [c for c, (pp, _, _) in table.items() if pp == p and c not in mine]
    roles: Counter = Counter()
    for p in mine:
        if p not in table:
            continue
        _, title, cpu = table[p]
        role = ("gateway replica" if "Gateway" in title else "image replica" if "ImageGenerator" in title else
                "serve proxy" if "ProxyActor" in title else "bench client + driver" if p == root else "ray (other)")
        roles[role] += cpu
    return dict(roles)


def predictor_alone(stepsaver: str, prompts: list[str]) -> dict[str, float]:
    """One StepSaver forward of 1 and of 16 prompts on one thread (the Gateway replica's budget), in ms."""
    from actors.stepsaver import StepPredictor

    p = StepPredictor.load(stepsaver, num_threads=1)
    out = {}
    for n in (1, 16):
        p.predict_steps(prompts[:n])
        t = []
        for i in range(10):
            t0 = time.perf_counter()
            p.predict_steps(prompts[i * n : (i + 1) * n])
            t.append((time.perf_counter() - t0) * 1000)
        out[f"batch_{n}_ms"] = round(statistics.median(t), 2)
    return out


# 2. /v1/steps, one variant in this process (run as a subprocess of main) --------------------------------------


def steps_variant(variant: str, found: dict[str, str], n_steps: int, n_warm: int, tmp: Path) -> dict:
    """Start Ray + the app (direct ingress or not: the env was set by the parent), load /v1/steps, return figures."""
    import ray
    from ray import serve

    from dynagen.app.serve.api import Percentiles
    from dynagen.app.serve.deployments import start
    from dynagen.core.settings import load_settings
    from dynagen.world.synth import example_prompts

    port = int(os.environ.get("BENCH_SERVE_PORT") or free_port())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / f"ray-{variant}"))
    settings, _ = load_settings(overrides={
        "images.model": found["model"], "images.stepsaver": found["stepsaver"], "llm.router": "random",
        "serve.port": port, "serve.app_name": f"bench-{variant}", "serve.ingress_num_cpus": 1.0,
        "serve.images_num_cpus": 1.0, "serve.ingress_max_replicas": 1, "serve.images_max_replicas": 1,
        "serve.direct_ingress": variant == "direct_ingress"}, env={})
    try:
        url = start(settings)
        prompts = list(dict.fromkeys(example_prompts(n_steps * 3, PROMPT_SEED)))
        prompts = (prompts * (1 + (n_steps + n_warm) // len(prompts)))[: n_steps + n_warm]
        asyncio.run(closed_loop(url + "/v1/steps", [{"prompts": [p]} for p in prompts[:n_warm]], STEPS_CLIENTS))
        cpu0 = cpu_by_role(os.getpid())
        lat, _, wall = asyncio.run(closed_loop(url + "/v1/steps", [{"prompts": [p]} for p in prompts[n_warm:]],
                                               STEPS_CLIENTS))
        cpu1 = cpu_by_role(os.getpid())
    finally:
        serve.shutdown()
        ray.shutdown()
    s = Percentiles(lat).summary()
    cpu_ms = {k: round((cpu1.get(k, 0) - cpu0.get(k, 0)) / len(lat) * 1000, 2) for k in cpu1}
    return {"variant": variant, "clients": STEPS_CLIENTS, **s, "requests_per_s": round(len(lat) / wall, 1),
            "cpu_ms_per_request": dict(sorted(cpu_ms.items(), key=lambda kv: -kv[1]))}


def run_steps_variant_subprocess(variant: str, smoke: bool, found: dict[str, str], tmp: Path) -> dict:
    from dynagen.app.serve.deployments import direct_ingress_env
    from dynagen.core.settings import ServeSettings

    port = free_port()
    env = {**os.environ, "BENCH_SERVE_PORT": str(port)}
    if variant == "direct_ingress":
        env.update(direct_ingress_env(ServeSettings(port=port)))
    out = tmp / f"steps-{variant}-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "bench.serve", "--steps-variant", variant, "--variant-out", str(out),
           "--model", found["model"], "--stepsaver", found["stepsaver"]] + (["--smoke-test"] if smoke else [])
    subprocess.run(cmd, env=env, cwd=REPO, check=True)
    return json.loads(out.read_text())


# 3. /v1/images, grouped vs continuous on one Ray ---------------------------------------------------------------


def images_round(url: str, bodies: list[dict], clients: int, mode: str) -> dict:
    from dynagen.app.serve.api import H_ACTIVE_MEAN, H_BATCH_SIZE, Percentiles

    asyncio.run(closed_loop(url + "/v1/images", bodies[:2], 2))  # warm-up
    lat, heads, wall = asyncio.run(closed_loop(url + "/v1/images", bodies, clients))
    if mode == "continuous":  # samples per UNet call, averaged over each image's calls
        sizes = [float(h[H_ACTIVE_MEAN.lower()]) for h in heads]
    else:  # images per @serve.batch call, as each image saw it
        sizes = [float(h[H_BATCH_SIZE.lower()]) for h in heads]
    return {"batching": mode, "clients": clients, "images_per_s": round(len(lat) / wall, 3),
            **Percentiles(lat).summary(), "mean_batch_or_active_size": round(statistics.mean(sizes), 2),
            "wall_s": round(wall, 1)}


def medians(rounds: list[dict], keys, digits: int) -> dict[str, float]:
    """Per key the median over alternating rounds (one variant's rounds), rounded."""
    return {k: round(statistics.median(r[k] for r in rounds), digits) for k in keys}


def main() -> None:
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))  # short: Ray's socket paths must fit in 107 bytes
    try:
        run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # Ray's session files and stand-in models: nothing to keep


def run(tmp: Path) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke-test", action="store_true", help="small counts, small step counts")
    ap.add_argument("--model", default=str(MODEL), help="diffusers folder (missing: a random tiny-sd stand-in)")
    ap.add_argument("--stepsaver", default=str(STEPSAVER), help="StepSaver folder (missing: a tiny stand-in)")
    ap.add_argument("--out", default=None, help="results JSON (default: bench/results/serve.json; smoke: out/bench/)")
    ap.add_argument("--only", choices=["steps", "images"], default=None, help="run one part")
    ap.add_argument("--steps-variant", default=None, help=argparse.SUPPRESS)  # internal: one /v1/steps subprocess
    ap.add_argument("--variant-out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    smoke = a.smoke_test
    n_steps = SMOKE["steps_requests"] if smoke else STEPS_REQUESTS
    n_warm = SMOKE["steps_warmup"] if smoke else STEPS_WARMUP
    if a.steps_variant:
        found = {"model": a.model, "stepsaver": a.stepsaver}
        Path(a.variant_out).write_text(json.dumps(steps_variant(a.steps_variant, found, n_steps, n_warm, tmp)))
        return

    import ray
    from ray import serve

    from dynagen.app.serve.deployments import start
    from dynagen.core.settings import load_settings
    from dynagen.world.synth import example_prompts

    result: dict = {"bench": "serve", "smoke_test": smoke, "python": sys.version.split()[0],
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()], "targets": TARGETS}
    found = models(tmp, Path(a.model), Path(a.stepsaver))
    result["models"] = shown(found)

    # 1. /v1/steps: proxy (before) vs direct ingress (after), alternating subprocess rounds
    if a.only in (None, "steps"):
        load0 = [round(x, 2) for x in os.getloadavg()]
        prompts = list(dict.fromkeys(example_prompts(200, PROMPT_SEED)))
        result["predictor_alone"] = predictor_alone(found["stepsaver"], prompts)
        rounds = []
        for _ in range(SMOKE["steps_rounds"] if smoke else STEPS_ROUNDS):
            for variant in ("proxy", "direct_ingress"):
                r = run_steps_variant_subprocess(variant, smoke, found, tmp)
                rounds.append(r)
                print(json.dumps(r), flush=True)
        summary = {variant: medians([r for r in rounds if r["variant"] == variant],
                                    ("p50_ms", "p90_ms", "p99_ms", "requests_per_s"), 2)
                   for variant in ("proxy", "direct_ingress")}
        p, d = summary["proxy"], summary["direct_ingress"]
        summary["direct_vs_proxy"] = {"p50": round(d["p50_ms"] / p["p50_ms"], 2),
                                      "p99": round(d["p99_ms"] / p["p99_ms"], 2),
                                      "throughput": round(d["requests_per_s"] / p["requests_per_s"], 2)}
        summary["meets_targets"] = {v: summary[v]["p50_ms"] <= TARGETS["steps_p50_ms"] and
                                    summary[v]["p99_ms"] <= TARGETS["steps_p99_ms"] for v in ("proxy", "direct_ingress")}
        result["steps"] = {"clients": STEPS_CLIENTS, "requests_per_round": n_steps, "rounds": rounds,
                           "median_of_rounds": summary,
                           "load_average_start_end": [load0, [round(x, 2) for x in os.getloadavg()]]}

    # 2. /v1/images: grouped vs continuous at a mixed step load, alternating rounds (in-place app updates)
    if a.only in (None, "images"):
        load0 = [round(x, 2) for x in os.getloadavg()]
        n_img = SMOKE["image_requests"] if smoke else IMAGE_REQUESTS
        spread = SMOKE["image_steps"] if smoke else IMAGE_STEPS
        img_prompts = example_prompts(n_img, PROMPT_SEED + 1)
        bodies = [{"prompt": p, "seed": i, "steps": spread[i % len(spread)]} for i, p in enumerate(img_prompts)]
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=str(tmp / "ray-images"))
        base = {"images.model": found["model"], "images.stepsaver": found["stepsaver"], "llm.router": "random",
                "serve.port": free_port(), "serve.app_name": "bench-images", "serve.ingress_num_cpus": 0.5,
                "serve.images_num_cpus": 1.0, "serve.ingress_max_replicas": 1, "serve.images_max_replicas": 1,
                "serve.batch_wait_timeout_s": IMAGE_WAIT_S, "serve.max_batch_size": IMAGE_BATCH_SIZE,
                "serve.images_max_ongoing_requests": 64}
        rounds = []
        try:
            for _ in range(SMOKE["image_rounds"] if smoke else IMAGE_ROUNDS):
                for mode in ("grouped", "continuous"):
                    cfg, _ = load_settings(overrides={**base, "serve.batching": mode}, env={})
                    url = start(cfg)  # in-place update of the same app; returns when the new replicas are up
                    for clients in IMAGE_CLIENTS:
                        r = images_round(url, bodies, clients, mode)
                        rounds.append(r)
                        print(json.dumps(r), flush=True)
        finally:
            serve.shutdown()
            ray.shutdown()
        summary = {}
        for clients in IMAGE_CLIENTS:
            at = summary[f"{clients}_clients"] = {}
            for mode in ("grouped", "continuous"):
                at[mode] = medians([r for r in rounds if r["batching"] == mode and r["clients"] == clients],
                                   ("images_per_s", "p50_ms", "p99_ms", "mean_batch_or_active_size"), 3)
            g, c = at["grouped"], at["continuous"]
            at["continuous_vs_grouped"] = {"images_per_s": round(c["images_per_s"] / g["images_per_s"], 2),
                                           "p50": round(c["p50_ms"] / g["p50_ms"], 2),
                                           "p99": round(c["p99_ms"] / g["p99_ms"], 2)}
        result["images"] = {"clients": list(IMAGE_CLIENTS), "requests_per_round": n_img, "steps_spread": spread,
                            "max_batch_size": IMAGE_BATCH_SIZE, "rounds": rounds, "median_of_rounds": summary,
                            "load_average_start_end": [load0, [round(x, 2) for x in os.getloadavg()]]}
    result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]

    out = Path(a.out) if a.out else (REPO / "out" / "bench" / "serve-smoke.json" if smoke else
                                     REPO / "bench" / "results" / "serve.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    if a.only and out.is_file():  # one part re-run: keep the other part's figures (and say when each was taken)
        result = {**json.loads(out.read_text()), **result, f"{a.only}_rerun_alone": True}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("steps", "images") if k in result}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

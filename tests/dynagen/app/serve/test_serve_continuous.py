"""``/v1/images`` on the continuous scheduler (Serve's default, ``serve.batching=auto``) over real HTTP on loopback.

One Serve app for the module on the session's Ray, tiny random diffusion model. Requests of different step counts
join one active set; each image says what it shared (headers), and equals the grouped path's image for the same
prompt, seed and steps to within 1/255. No wall-clock assertions: overlap is read from the tick numbers each image
carries, and a round without overlap (a very loaded machine) is retried a bounded number of times.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dynagen.app.devservers import free_port
from dynagen.app.serve.api import (
    H_ACTIVE_MEAN,
    H_BATCH_STEPS,
    H_BATCHING,
    H_STEPS,
    H_TICKS,
)

requests = pytest.importorskip("requests")

APP = "dynagen-continuous-test"
PROMPTS = ["a red circle on a white background", "a blue square on a black background",
           "a green star on a gray background", "a yellow dotted triangle at the top on a beige background"]
STEPS = [6, 9, 12]  # a spread of counts, long enough (tens of UNet calls) that concurrent requests meet


@pytest.fixture(scope="module")
def app(ray_local, tiny_model):
    from ray import serve

    from dynagen.app.serve.deployments import start
    from dynagen.core.settings import load_settings

    settings, _ = load_settings(overrides={
        # No batching setting: serve.batching=auto runs continuous (the batch job's images.batching stays grouped).
        "images.model": tiny_model, "llm.router": "random",
        "serve.port": free_port(), "serve.app_name": APP,
        "serve.ingress_num_cpus": 0.25, "serve.images_num_cpus": 0.5,  # fractional: the session Ray has 2 CPUs
        "serve.ingress_max_replicas": 1, "serve.images_max_replicas": 1,
        "serve.max_steps": 20, "serve.max_batch_size": 4,
    }, env={})
    url = start(settings)
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def grouped(tiny_model):
    """The grouped path's generator (the plain pipeline, one image per call) in this process: the reference."""
    from actors.diffusion import DiffusionCore

    return DiffusionCore(tiny_model, batch_size=1, num_threads=1)


def _post(url, body, **kw):
    return requests.post(url + "/v1/images", json=body, timeout=300, **kw)


def _png(content: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


def _ticks(r) -> tuple[int, int]:
    a, b = r.headers[H_TICKS].split("-")
    return int(a), int(b)


def test_different_step_counts_share_ticks_and_match_the_grouped_image(app, grouped):
    url = app
    jobs = [{"prompt": PROMPTS[i % 4], "seed": 10 + i, "steps": STEPS[i % 3]} for i in range(9)]
    for _ in range(3):  # a round where requests did not meet (a stalled machine) is retried, not failed
        with ThreadPoolExecutor(len(jobs)) as pool:
            out = list(pool.map(lambda j: _post(url, j), jobs))
        for r, j in zip(out, jobs):
            assert r.status_code == 200, r.text
            assert r.headers[H_BATCHING] == "continuous" and int(r.headers[H_STEPS]) == j["steps"]
            first, last = _ticks(r)
            assert last - first + 1 == j["steps"]  # one tick per step: it ran exactly its own schedule
        mixed = [r for r in out if len(r.headers[H_BATCH_STEPS].split(",")) > 1]
        if mixed:
            break
    assert mixed, "no image shared a UNet call with another step count in 3 rounds"
    r = mixed[0]
    assert float(r.headers[H_ACTIVE_MEAN]) > 1
    # The claim is backed by the tick numbers: another image of another step count ran during this one's ticks.
    me, idx = _ticks(r), out.index(r)
    assert any(k != idx and jobs[k]["steps"] != jobs[idx]["steps"] and _ticks(o)[0] <= me[1] and me[0] <= _ticks(o)[1]
               for k, o in enumerate(out))
    # Same prompt + seed + steps ⇒ the grouped path's image, to within one level of 255.
    for r, j in list(zip(out, jobs))[:4]:
        ref = grouped.generate([j["prompt"]], [j["seed"]], j["steps"])[0]
        assert np.abs(_png(r.content).astype(int) - ref.astype(int)).max() <= 1


def test_json_reports_how_the_image_was_batched(app):
    j = _post(app, {"prompt": PROMPTS[0], "seed": 3, "steps": 4}, params={"format": "json"})
    assert j.status_code == 200, j.text
    body = j.json()
    assert body["batching"] == "continuous" and body["steps"] == body["steps_run"] == 4
    assert body["mean_active"] >= 1 and body["last_tick"] - body["first_tick"] == 3
    assert 4 in body["batch_steps"]


def test_a_failing_request_does_not_stop_the_loop(app):
    """A seed the generator cannot take (past 64 bits; the ingress would refuse it, so it is sent to the image
    deployment directly) fails inside a tick: that request gets a 500 result, a step count below 1 a 422, and the
    loop keeps serving the requests that come next."""
    from ray import serve

    handle = serve.get_deployment_handle("ImageGenerator", app_name=APP)
    bad = handle.generate.remote(PROMPTS[0], 2**70, 4).result(timeout_s=300)
    assert bad.status == 500 and "overflow" in bad.error.lower()
    zero = handle.generate.remote(PROMPTS[0], 1, 0).result(timeout_s=300)
    assert zero.status == 422 and "steps" in zero.error
    with ThreadPoolExecutor(3) as pool:
        out = list(pool.map(lambda s: _post(app, {"prompt": PROMPTS[1], "seed": s, "steps": 5}), range(3)))
    assert [r.status_code for r in out] == [200, 200, 200]
    ok = handle.generate.remote(PROMPTS[2], 1, 3).result(timeout_s=300)
    assert ok.status == 200 and ok.png and ok.batch.batching == "continuous"

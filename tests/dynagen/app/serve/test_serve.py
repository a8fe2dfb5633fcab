"""The online app over real HTTP on loopback: every endpoint, bad input, concurrent image requests batched by steps.

Pure helpers first (no Ray), then one Serve app per module on the session's Ray (``ray_local``), with a tiny random
diffusion model, a tiny StepSaver trained here (as in tests/actors/test_stepsaver.py) and the ``random`` router.
No wall-clock assertions: batching is checked through the headers each image carries.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pytest

from dynagen.app.devservers import free_port
from dynagen.app.serve.api import (
    H_BATCH_ID,
    H_BATCH_SIZE,
    H_BATCH_STEPS,
    H_STEPS,
    H_STEPS_RUN,
    ClientError,
    check_content_length,
    check_prompts,
    check_steps,
    clean_validation_errors,
    distinct_steps,
    endpoint_tag,
)

requests = pytest.importorskip("requests")

GRID = [4, 8, 16, 32]
SECRET = "sk-live-DO-NOT-ECHO-1234567890"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPTS = [
    "a red circle on a white background", "a blue square on a black background", "a green star on a gray background",
    "a yellow circle in the center on a beige background", "a pink square at the top on a white background",
    "a purple striped star on the left and an orange dotted triangle on the right on a gray background",
    "three small green striped stars on a black background", "two small pink dotted triangles on a light blue "
    "background", "a black striped star at the bottom and a yellow dotted circle at the top on a white background",
]


# 1. Pure helpers ------------------------------------------------------------------------------------------------


def test_client_errors_name_the_field_and_pick_413_or_422():
    with pytest.raises(ClientError) as e:
        check_prompts(["ok", "x" * 11], max_chars=10, max_batch=5)
    assert e.value.status == 413 and e.value.loc == ("body", "prompts", 1)
    with pytest.raises(ClientError) as e:
        check_prompts(["ok", " \t"], max_chars=10, max_batch=5)
    assert e.value.status == 422 and "whitespace" in e.value.msg
    with pytest.raises(ClientError) as e:
        check_prompts(["a"] * 6, max_chars=10, max_batch=5)
    assert e.value.status == 413 and e.value.loc == ("body", "prompts")
    with pytest.raises(ClientError):
        check_steps(51, max_steps=50)
    check_steps("auto", 50), check_steps(50, 50)
    assert check_content_length("2048", 1024).status == 413 and check_content_length("10", 1024) is None
    assert check_content_length("ten", 1024).status == 422


def test_validation_errors_never_echo_the_value():
    raw = [{"loc": ("body", "prompts", 0), "msg": "Input should be a valid string", "type": "string_type",
            "input": SECRET, "ctx": {"x": SECRET}, "url": "https://errors.pydantic.dev"}]
    body = clean_validation_errors(raw)
    assert body == {"detail": [{"loc": ["body", "prompts", 0], "msg": "Input should be a valid string",
                                "type": "string_type"}]}
    assert distinct_steps([("a", 1, 8), ("b", 2, 8)]) == [8]
    assert endpoint_tag("/v1/steps") == "/v1/steps" and endpoint_tag("/wp-admin.php") == "other"


# 2. The app over HTTP --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor_dir(train_toy_stepsaver):
    predictor, _, path = train_toy_stepsaver(PROMPTS, GRID)
    return path, predictor.predict_steps(PROMPTS)


@pytest.fixture(scope="module")
def app(ray_local, tiny_model, predictor_dir):
    """(base URL, expected steps per PROMPTS): one Serve app for the module, shut down at the end."""
    from ray import serve

    from dynagen.app.serve.deployments import start
    from dynagen.core.settings import load_settings

    path, expected = predictor_dir
    settings, _ = load_settings(overrides={
        "images.model": tiny_model, "images.stepsaver": str(path), "llm.router": "random",
        "serve.batching": "grouped",  # this module tests @serve.batch queues; test_serve_continuous.py the default
        "serve.port": free_port(), "serve.app_name": "dynagen-test",
        # Fractional CPUs: the session Ray has 2 and other work may hold some (NOTES: whole CPUs deadlock pools).
        "serve.ingress_num_cpus": 0.25, "serve.images_num_cpus": 0.5,
        "serve.ingress_max_replicas": 1, "serve.images_max_replicas": 1,
        "serve.max_prompt_chars": 300, "serve.max_batch_prompts": 8, "serve.max_steps": 20,
        "serve.max_request_bytes": 64 * 1024,
        # Long enough that concurrent requests of one step count share a batch even on a loaded machine.
        "serve.max_batch_size": 4, "serve.batch_wait_timeout_s": 0.5,
    }, env={})
    url = start(settings)
    yield url, expected
    serve.shutdown()


def _post(url, path, body=None, **kw):
    return requests.post(url + path, json=body, timeout=120, **kw)


def test_healthz(app):
    url, _ = app
    r = requests.get(url + "/healthz", timeout=30)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "components": {"stepsaver": "ok", "router": "ok", "images": "ok"}}


def test_steps_match_the_predictor(app):
    url, expected = app
    r = _post(url, "/v1/steps", {"prompts": PROMPTS[:8]})
    assert r.status_code == 200, r.text
    assert r.json() == {"steps": expected[:8]}
    assert set(r.json()["steps"]) <= set(GRID)


def test_concurrent_steps_requests_each_get_their_own_answer(app):
    url, expected = app
    with ThreadPoolExecutor(8) as pool:  # these share @serve.batch calls; answers must not get crossed
        out = list(pool.map(lambda i: _post(url, "/v1/steps", {"prompts": [PROMPTS[i % len(PROMPTS)]]}), range(16)))
    assert [r.json()["steps"][0] for r in out] == [expected[i % len(PROMPTS)] for i in range(16)]


def test_route(app):
    url, _ = app
    r = _post(url, "/v1/route", {"prompts": PROMPTS[:6], "large_share": 0.3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["router"] == "random" and body["large_share"] == 0.3 and len(body["results"]) == 6
    for res in body["results"]:
        assert 0.0 <= res["score"] <= 1.0
        assert res["route"] == ("large" if res["score"] >= body["threshold"] else "small")
    assert {x["route"] for x in _post(url, "/v1/route", {"prompts": PROMPTS[:8], "large_share": 0}).json()["results"]} == {"small"}
    everything = _post(url, "/v1/route", {"prompts": PROMPTS[:8], "large_share": 1}).json()
    assert everything["threshold"] is None and {x["route"] for x in everything["results"]} == {"large"}
    # No share given: the settings' default (llm.large_share = 0.3).
    assert _post(url, "/v1/route", {"prompts": PROMPTS[:2]}).json()["large_share"] == 0.3


def test_images_png_json_and_reproducible(app):
    url, _ = app
    r = _post(url, "/v1/images", {"prompt": PROMPTS[0], "seed": 7, "steps": 2})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.content.startswith(PNG_MAGIC)
    assert r.headers[H_STEPS] == "2" and r.headers[H_BATCH_STEPS] == "2" and r.headers[H_STEPS_RUN] == "2"
    j = _post(url, "/v1/images?format=json", {"prompt": PROMPTS[0], "seed": 7, "steps": 2})
    assert j.status_code == 200 and j.headers["content-type"] == "application/json"
    body = j.json()
    assert body["steps"] == body["steps_run"] == 2 and body["seed"] == 7 and body["width"] == body["height"] == 64
    assert base64.b64decode(body["image_png_b64"]) == r.content  # same prompt + seed + steps = same image
    other = _post(url, "/v1/images", {"prompt": PROMPTS[0], "seed": 8, "steps": 2})
    assert other.status_code == 200 and other.content != r.content


def test_images_auto_uses_the_predicted_steps(app):
    url, expected = app
    r = _post(url, "/v1/images", {"prompt": PROMPTS[1], "seed": 1})  # steps defaults to "auto"
    assert r.status_code == 200, r.text
    assert int(r.headers[H_STEPS]) == expected[1]


def test_auto_batching_serves_a_family_without_continuous_batching_grouped(family_models):
    """serve.batching=auto on an SDXL folder (continuous batching is SD 1.x/2.x only): the replica loads grouped and
    serves, rather than refusing the model. Driven directly, like the early-stop test below."""
    import asyncio

    from dynagen.app.serve.deployments import ImageGenerator
    from dynagen.core.settings import load_settings

    settings, _ = load_settings(overrides={"images.model": family_models["sdxl"]}, env={})
    gen = ImageGenerator.func_or_class(settings.model_dump_json())
    assert gen.unavailable is None and gen.core.continuous is None
    res = asyncio.run(gen._run_batch(2, [("a red circle", 1, 2)]))
    assert res[0].png.startswith(b"\x89PNG")


@pytest.mark.parametrize("batching", ["grouped", "continuous"])
def test_image_deployment_early_stop_reports_steps_run(ray_local, tiny_model, batching):
    """images.early_stop reaches Serve in both batching modes: the step count is a budget, and each image says how
    many steps it ran. The deployment class is driven directly (no HTTP): one more Serve app per test module would
    cost more than it checks. A huge threshold makes every image stop at its first check after min_steps."""
    import asyncio

    from dynagen.app.serve.deployments import ImageGenerator
    from dynagen.core.settings import load_settings

    over = {"images.model": tiny_model, "images.early_stop": True, "images.early_stop_signal": "rate",
            "images.early_stop_threshold": 1e9, "serve.batching": batching,
            "images.early_stop_min_steps": 2, "images.early_stop_interval": 1}
    settings, _ = load_settings(overrides=over, env={})
    gen = ImageGenerator.func_or_class(settings.model_dump_json())
    assert gen.unavailable is None and (gen.core.continuous is not None) == (batching == "continuous")

    async def both():  # continuous: both join the replica's active set; grouped: one batch, as @serve.batch forms it
        if batching == "grouped":
            return await gen._run_batch(8, [(PROMPTS[0], 1, 8), (PROMPTS[1], 2, 8)])
        return await asyncio.gather(*(gen.generate(p, seed, 8) for p, seed in ((PROMPTS[0], 1), (PROMPTS[1], 2))))

    res = asyncio.run(both())
    assert [r.status for r in res] == [200, 200] and all(r.png.startswith(PNG_MAGIC) for r in res)
    assert [(r.steps, r.ran) for r in res] == [(8, 2), (8, 2)]
    assert res[0].headers()[H_STEPS_RUN] == "2" and res[0].to_json()["steps_run"] == 2


def test_concurrent_images_never_mix_step_counts(app):
    url, expected = app
    # 4 requests at each of two fixed step counts plus 4 'auto' ones (grid steps), interleaved.
    jobs = []
    for i in range(4):
        jobs += [({"prompt": PROMPTS[i], "seed": i, "steps": 2}, 2), ({"prompt": PROMPTS[i], "seed": i, "steps": 3}, 3),
                 ({"prompt": PROMPTS[i + 4], "seed": i, "steps": "auto"}, expected[i + 4])]
    with ThreadPoolExecutor(len(jobs)) as pool:
        out = list(pool.map(lambda j: _post(url, "/v1/images", j[0]), jobs))
    batches = defaultdict(list)
    for r, (_, steps) in zip(out, jobs):
        assert r.status_code == 200, r.text
        assert int(r.headers[H_STEPS]) == steps
        assert r.headers[H_BATCH_STEPS] == str(steps)  # the batch that made it held only this step count
        batches[r.headers[H_BATCH_ID]].append((steps, int(r.headers[H_BATCH_SIZE])))
    for members in batches.values():
        assert len({s for s, _ in members}) == 1
        assert {n for _, n in members} == {len(members)}  # every member of the batch is one of ours
    # Batching happened: 12 images in fewer than 12 batches (queues wait 0.5 s to fill; not a timing assertion
    # on latency, only that concurrent requests of one step count met in a queue).
    assert len(batches) < len(jobs)


BAD = [
    # (path, json body or raw bytes, expected status, a field the answer must name)
    ("/v1/steps", b"{not json", 422, "body"),
    ("/v1/steps", {}, 422, "prompts"),
    ("/v1/steps", {"prompts": "one string"}, 422, "prompts"),
    ("/v1/steps", {"prompts": []}, 422, "prompts"),
    ("/v1/steps", {"prompts": [SECRET, 3]}, 422, "prompts"),
    ("/v1/steps", {"prompts": ["ok"], "prompt": SECRET}, 422, "prompt"),
    ("/v1/steps", {"prompts": ["ok", ""]}, 422, "prompts"),
    ("/v1/steps", {"prompts": [SECRET + " " * 300]}, 413, "prompts"),
    ("/v1/steps", {"prompts": [SECRET] * 9}, 413, "prompts"),
    ("/v1/steps", {"prompts": ["x" * 9000] * 8}, 413, "bytes"),  # over max_request_bytes, refused unread
    ("/v1/route", {"prompts": [SECRET], "large_share": 2}, 422, "large_share"),
    ("/v1/route", {"prompts": ["  "]}, 422, "prompts"),
    ("/v1/images", {"prompt": SECRET, "seed": -1}, 422, "seed"),
    ("/v1/images", {"prompt": SECRET, "seed": 2**40}, 422, "seed"),
    ("/v1/images", {"prompt": SECRET, "steps": 0}, 422, "steps"),
    ("/v1/images", {"prompt": SECRET, "steps": "12"}, 422, "steps"),
    ("/v1/images", {"prompt": SECRET, "steps": 21}, 422, "steps"),
    ("/v1/images", {"prompt": SECRET, "steps": 2.5}, 422, "steps"),
    ("/v1/images", {"prompt": None}, 422, "prompt"),
    ("/v1/images", {"prompt": "x" * 301, "steps": 2}, 413, "prompt"),
    ("/v1/images?format=gif", {"prompt": SECRET, "steps": 2}, 422, "format"),
]


@pytest.mark.parametrize("path,body,status,field", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)])
def test_bad_input_is_a_4xx_naming_the_field(app, path, body, status, field):
    url, _ = app
    if isinstance(body, bytes):
        r = requests.post(url + path, data=body, headers={"content-type": "application/json"}, timeout=60)
    else:
        r = _post(url, path, body)
    assert r.status_code == status, r.text
    assert field in r.text
    assert SECRET not in r.text


def test_request_size_limit_comes_from_the_settings(app):
    """The app's serve.max_request_bytes is 64 KiB (the default is 1 MiB): a body one byte over it is refused
    before it is read, the same body one byte under it is served."""
    url, expected = app
    limit = 64 * 1024
    body = '{"prompts": ["%s"]}' % PROMPTS[1]
    headers = {"content-type": "application/json"}
    over = requests.post(url + "/v1/steps", data=body + " " * (limit + 1 - len(body)), headers=headers, timeout=60)
    assert over.status_code == 413, over.text
    assert over.json()["detail"][0]["msg"] == f"request body is {limit + 1} bytes (max {limit})"
    under = requests.post(url + "/v1/steps", data=body + " " * (limit - 1 - len(body)), headers=headers, timeout=60)
    assert under.status_code == 200, under.text
    assert under.json() == {"steps": [expected[1]]}


def test_server_keeps_serving_after_bad_input(app):
    url, expected = app
    assert requests.get(url + "/v1/steps", timeout=30).status_code == 405
    assert requests.get(url + "/nope", timeout=30).status_code == 404
    r = requests.post(url + "/v1/steps", data="prompts=a", headers={"content-type": "text/plain"}, timeout=30)
    assert 400 <= r.status_code < 500
    assert _post(url, "/v1/steps", {"prompts": [PROMPTS[2]]}).json() == {"steps": [expected[2]]}
    assert requests.get(url + "/healthz", timeout=30).json()["status"] == "ok"
    assert _post(url, "/v1/images", {"prompt": PROMPTS[0], "steps": 2}).status_code == 200


def test_cli_serve_help():
    from typer.testing import CliRunner

    from dynagen.app.cli import app as cli

    r = CliRunner().invoke(cli, ["serve", "--help"])
    assert r.exit_code == 0 and "--port" in r.output and "--host" in r.output


def test_metrics_exported_in_prometheus_format(app):
    """Requests, latency and steps reach Ray's metrics agent (scraped like Prometheus would, polled: export lags)."""
    import time

    import ray

    url, _ = app
    node = getattr(ray._private.worker, "_global_node", None)
    port = getattr(node, "metrics_export_port", None)
    if not port:
        pytest.skip("this Ray exposes no metrics export port")
    _post(url, "/v1/steps", {"prompts": [PROMPTS[0]]})
    _post(url, "/v1/images", {"prompt": PROMPTS[0], "steps": 2})
    wanted = ["dynagen_requests_total", "dynagen_request_latency_ms_bucket", "dynagen_steps_bucket",
              "dynagen_image_batch_size_bucket", "dynagen_images_total"]

    def requests_lines(text):
        return [ln for ln in text.splitlines() if "dynagen_requests_total" in ln and not ln.startswith("#")]

    def complete(text):
        lines = requests_lines(text)
        return (all(w in text for w in wanted) and any('endpoint="/v1/steps"' in ln and 'status="200"' in ln for ln in lines)
                and any('status="422"' in ln for ln in lines))  # this module's bad-input requests

    _post(url, "/v1/steps", {})  # one 422 of our own, in case this test runs alone
    text = ""
    for _ in range(30):  # Ray exports every few seconds, series by series; bounded poll, no timing assertion
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if complete(text):
            break
        time.sleep(2)
    missing = [w for w in wanted if w not in text]
    assert not missing, f"not exported: {missing}"
    assert complete(text), requests_lines(text)
    assert SECRET not in text


def test_cli_serve_rejects_bad_settings_without_starting():
    from typer.testing import CliRunner

    from dynagen.app.cli import app as cli

    r = CliRunner().invoke(cli, ["serve", "--port", "0"])
    assert r.exit_code == 2 and "serve.port" in r.output


def test_app_builder_takes_manifest_args():
    """The RayService import_path target: dotted settings keys from the manifest's args → a bound application."""
    import pytest
    from ray.serve import Application

    from dynagen.app.serve.deployments import app_builder
    from dynagen.core.settings import SettingsError

    assert isinstance(app_builder({"serve.images_min_replicas": 0, "images.scheduler": "euler"}), Application)
    with pytest.raises(SettingsError, match="serve.nope"):
        app_builder({"serve.nope": 1})


def test_continuous_batching_builds_a_serve_app():
    """serve.batching=continuous is served, with adaptive steps or early stopping too (test_serve_continuous.py runs
    the default, auto = continuous, over HTTP); the two per-sample rules together are refused in one line."""
    from ray.serve import Application

    from dynagen.app.serve.deployments import app_builder
    from dynagen.core.settings import SettingsError

    assert isinstance(app_builder({"serve.batching": "continuous", "images.adaptive": True}), Application)
    assert isinstance(app_builder({"serve.batching": "continuous", "images.early_stop": True}), Application)
    with pytest.raises(SettingsError, match="two per-sample rules"):
        app_builder({"images.early_stop": True, "images.adaptive": True})

"""The online app on Ray Serve: StepSaver, routing and single-image generation behind one FastAPI ingress.

Two deployments (resources and autoscaling set in :func:`build_app`, from ``settings.serve``):

* ``Gateway`` (the FastAPI ingress; its app is built by :func:`make_api`): validates requests, holds the
  StepSaver predictor and the router (both small CPU models), and forwards image requests. Concurrent ``/v1/steps`` requests and ``steps="auto"`` image requests
  share one ``@serve.batch`` queue, so N waiting clients cost one encoder forward, not N.
* ``ImageGenerator``: holds a :class:`actors.diffusion.DiffusionCore`. **One ``@serve.batch`` queue per step
  count**, created on first use. Why not one queue that groups inside the handler with ``plan_batches``: a mixed
  batch (say 3×10 steps + 1×50 steps) would hold the 10-step requests until the 50-step group finished, and a
  queue filled by one step count would cut other step counts' batches short. Separate queues keep each step
  count's requests together, and a per-replica lock runs one diffusion batch at a time (the diffusers pipeline's
  scheduler is stateful, and two batches on 2 cores only thrash) — while one batch runs, the other queues keep
  filling, so batches get fuller under load. Each image comes back with its batch's id, size and the distinct step
  counts in it (headers ``X-Dynagen-Batch-*``), which is how tests check that no batch mixed step counts.
  With continuous batching (``serve.batching``: ``auto`` picks it where the model's family runs it, SD 1.x/2.x) the
  replica instead holds one :class:`actors.continuous.ContinuousSampler` (early stopping and adaptive steps included):
  a request is submitted to it and joins the running active set at the next tick, whatever its step count; one
  asyncio task per replica runs ticks in a worker thread while the sampler is busy and answers each request from
  the finished samples (key → future), so requests never wait on a lock or on another step count's batch. An
  image's record then says what it shared (``X-Dynagen-Active-Mean``, ``X-Dynagen-Ticks``, the step counts
  in ``X-Dynagen-Batch-Steps``); a failed tick answers 500 for the requests in the sampler and the loop goes on.

Hops: a request goes client → Serve's HTTP proxy → the Gateway replica (which also fetches the body back from the
proxy) → the predictor, in the Gateway. ``serve.direct_ingress`` drops the proxy: the Gateway replica listens on
``serve.port`` itself (bench/serve.py: ~1/4 of the CPU per /v1/steps request, 2.3× the requests/s on 2 cores).

Metrics (Ray's metrics API, exported by each node's metrics agent in Prometheus format, with Serve's deployment /
replica / application tags): ``dynagen_requests_total{endpoint,status}``, ``dynagen_request_latency_ms{endpoint}``,
``dynagen_steps{endpoint}`` (step counts predicted or used), ``dynagen_image_batch_size{steps}`` and
``dynagen_images_total{steps}``.

Run it with ``dynagen serve [--config FILE] [--host 127.0.0.1] [--port 8000]``, then::

    curl -s localhost:8000/healthz
    curl -s localhost:8000/v1/steps -H 'content-type: application/json' -d '{"prompts": ["a red circle"]}'
    curl -s localhost:8000/v1/route -H 'content-type: application/json' -d '{"prompts": ["2+2?"], "large_share": 0.3}'
    curl -s localhost:8000/v1/images -H 'content-type: application/json' -d '{"prompt": "a red circle", "seed": 1}' -o a.png
    curl -s 'localhost:8000/v1/images?format=json' -H 'content-type: application/json' -d '{"prompt": "a star", "steps": 8}'

Who may call: bound beyond loopback (or with ``serve.api_key_on_loopback``), every route but ``/healthz`` needs
``-H "Authorization: Bearer $DYNAGEN_SERVE__API_KEY"``; the replicas hold only the key's SHA-256 and compare
digests in constant time; a missing, malformed or wrong token gets 401 with a one-line reason.

Importing this module loads Ray Serve and FastAPI but no model, reads no env var and starts nothing; even the
FastAPI app is built per replica (:func:`make_api`), from the settings the deployment was bound with, so its limits
(request size, prompt length, batch size, steps) cannot be missing.
No ``from __future__ import annotations`` here: FastAPI resolves the route functions' annotations at run time.
"""

import asyncio
import itertools
import logging
import math
import time
import uuid
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve

from dynagen.core.errors import one_line, runtime_error
from dynagen.app.serve.api import (
    LATENCY_BUCKETS_MS,
    OPEN_PATHS,
    STEPS_BUCKETS,
    BatchRecord,
    ClientError,
    ImageRequest,
    ImageResult,
    RouteRequest,
    RouteResponse,
    RouteResult,
    StepsRequest,
    StepsResponse,
    auth_problem,
    check_content_length,
    check_prompt,
    check_prompts,
    check_steps,
    clean_validation_errors,
    distinct_steps,
    endpoint_tag,
    key_digest,
)
from dynagen.core.settings import ServeSettings, Settings, secret_exclude, settings_from_json

log = logging.getLogger("ray.serve")


class AuthConfigError(ValueError):
    """The app would be open beyond loopback: no API key configured."""


def _threads(num_cpus: float) -> int:
    # Ray sets OMP_NUM_THREADS=1 in replicas; use the CPUs the replica reserved (at least one).
    return max(1, math.ceil(num_cpus))


# 1. Image generation: one @serve.batch queue per step count, or one continuous active set ------------------------


@serve.deployment
class ImageGenerator:
    def __init__(self, settings_json: str):
        from ray.serve import metrics

        s = settings_from_json(settings_json)
        self.max_batch_size = s.serve.max_batch_size
        self.wait_s = s.serve.batch_wait_timeout_s
        self.core = None
        self.unavailable: str | None = None
        try:
            from actors.diffusion import DiffusionCore, check_model_dir

            # serve.batching=auto: continuous where the model's family runs it (SD 1.x/2.x), else grouped.
            batching = s.serve_image_batching(check_model_dir(s.images.model).family.per_sample is None)
            self.core = DiffusionCore(model=s.images.model, scheduler=s.images.scheduler,
                                      guidance_scale=s.images.guidance_scale, batch_size=s.serve.max_batch_size,
                                      num_threads=_threads(s.serve.images_num_cpus), **s.images.load_kwargs(),
                                      **{**s.images.early_stop_kwargs(), "batching": batching})
        except Exception as e:  # a missing/bad model folder: serve the other endpoints, answer 503 here
            self.unavailable = f"diffusion model not loaded ({one_line(e)})"
            log.warning("dynagen: %s", self.unavailable)
        self._batchers: dict[int, Any] = {}
        self._lock = asyncio.Lock()
        self._tag = uuid.uuid4().hex[:8]
        self._n = 0
        # Continuous batching (Settings.serve_image_batching()): requests in the sampler, by key, and the loop driving it.
        self._pending: dict[int, tuple[asyncio.Future, int, int]] = {}  # key -> (future, steps, seed)
        self._keys = itertools.count()
        self._loop_task: asyncio.Task | None = None
        self.m_batch = metrics.Histogram("dynagen_image_batch_size", description="Images per diffusion batch "
                                         "(continuous: samples per UNet call, steps=\"continuous\").",
                                         boundaries=[1, 2, 3, 4, 6, 8, 12, 16, 32], tag_keys=("steps",))
        self.m_images = metrics.Counter("dynagen_images_total", description="Images generated.", tag_keys=("steps",))

    def health(self) -> str:
        return self.unavailable or "ok"

    async def generate(self, prompt: str, seed: int, steps: int) -> ImageResult:
        if self.core is None:
            return ImageResult(steps=steps, seed=seed, error=f"unavailable: {self.unavailable}", status=503)
        if self.core.continuous is not None:
            return await self._generate_continuous(prompt, int(seed), int(steps))
        return await self._batcher(int(steps))((prompt, int(seed), int(steps)))

    # 1a. grouped: one @serve.batch queue per step count, one batch at a time under the lock

    def _batcher(self, steps: int):  # -> the batched coroutine function for this step count
        b = self._batchers.get(steps)
        if b is None:
            async def run_batch(items: list[tuple[str, int, int]], _steps: int = steps) -> list[ImageResult]:
                return await self._run_batch(_steps, items)

            b = serve.batch(max_batch_size=self.max_batch_size, batch_wait_timeout_s=self.wait_s)(run_batch)
            self._batchers[steps] = b
        return b

    async def _run_batch(self, steps: int, items: list[tuple[str, int, int]]) -> list[ImageResult]:
        from actors.diffusion import encode_png

        seen = distinct_steps(items)  # what actually arrived in this batch (the queue is per step count)
        prompts, seeds = [p for p, _, _ in items], [s for _, s, _ in items]
        async with self._lock:
            self._n += 1
            record = BatchRecord(f"{self._tag}-{self._n:06d}", len(items), seen)
            try:
                # With images.early_stop the step count is a budget: a converged image leaves the batch sooner.
                images, ran, _ = await asyncio.to_thread(self.core.generate_with_steps, prompts, seeds, steps)
                pngs = await asyncio.to_thread(lambda: [encode_png(im) for im in images])
            except Exception as e:  # one failed batch answers 500 for its requests; the replica keeps serving
                msg = runtime_error(e)
                log.error("dynagen: batch %s: %s", record.batch_id, msg)
                return [ImageResult(steps=steps, seed=sd, batch=record, error=msg, status=500) for sd in seeds]
        self.m_batch.observe(len(items), tags={"steps": str(steps)})
        self.m_images.inc(len(items), tags={"steps": str(steps)})
        h, w = self.core.height, self.core.width
        return [ImageResult(png=png, steps=steps, seed=sd, width=w, height=h, batch=record, steps_run=r)
                for png, sd, r in zip(pngs, seeds, ran)]

    # 1b. continuous: a request joins the running active set at the next tick, whatever its step count

    async def _generate_continuous(self, prompt: str, seed: int, steps: int) -> ImageResult:
        from actors.continuous import Request

        key = next(self._keys)
        try:
            self.core.continuous.submit([Request(key, prompt, seed, steps)])
        except ValueError as e:  # steps < 1 (the ingress checks it first): this request only
            return ImageResult(steps=steps, seed=seed, error=one_line(e), status=422)
        fut = asyncio.get_running_loop().create_future()
        self._pending[key] = (fut, steps, seed)
        # One loop per replica, started on demand; it ends when the sampler is idle. Submit and this check run on
        # the replica's event loop, so a request cannot slip in between the loop's last check and its exit.
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._drive())
        return await fut

    def _tick(self) -> list[tuple[Any, bytes | None, str | None]]:
        """One sampler tick in a worker thread: (finished sample, PNG or None, error or None)."""
        from actors.diffusion import encode_png

        out = []
        for f in self.core.continuous.step():
            try:
                out.append((f, encode_png(f.image), None))
            except Exception as e:  # this image only; the sampler's state is fine
                out.append((f, None, runtime_error(e)))
        return out

    async def _drive(self) -> None:
        sampler = self.core.continuous
        h, w = self.core.height, self.core.width
        while sampler.busy:
            try:
                done = await asyncio.to_thread(self._tick)
            except Exception as e:
                # A failed tick leaves the active set half-stepped: drop everything in the sampler and answer 500
                # for every request waiting on it; the loop goes on with the requests that come next.
                msg = runtime_error(e)
                sampler.clear()
                log.error("dynagen: continuous tick %d failed, %d requests answered 500: %s",
                          sampler.stats.ticks, len(self._pending), msg)
                pending, self._pending = self._pending, {}
                for fut, steps, seed in pending.values():
                    if not fut.done():
                        fut.set_result(ImageResult(steps=steps, seed=seed, error=msg, status=500))
                continue
            stats = sampler.stats
            for n in stats.active_per_tick:
                self.m_batch.observe(n, tags={"steps": "continuous"})
            stats.active_per_tick.clear()  # a server runs for days: keep the totals, not a list per tick
            for f, png, err in done:
                entry = self._pending.pop(f.key, None)
                if entry is None:
                    continue
                fut, steps, seed = entry
                record = BatchRecord(f"{self._tag}-t{f.first_tick:07d}", max(1, round(f.mean_active)),
                                     list(f.shared_steps), "continuous", f.mean_active, f.first_tick, f.last_tick)
                if err is None:
                    self.m_images.inc(1, tags={"steps": str(steps)})
                    res = ImageResult(png=png, steps=steps, seed=seed, width=w, height=h, batch=record,
                                      steps_run=f.steps)  # fewer than steps: early stop or adaptive steps
                else:
                    res = ImageResult(steps=steps, seed=seed, batch=record, error=err, status=500)
                if not fut.done():  # a cancelled request (client gone) still ran to the end: nobody to answer
                    fut.set_result(res)


# 2. The ingress ------------------------------------------------------------------------------------------------


def _unavailable(what: str, why: str) -> JSONResponse:
    return JSONResponse({"detail": f"{what} unavailable: {why}"}, status_code=503)


def make_api(gateway: "Gateway") -> FastAPI:
    """The FastAPI app of one Gateway replica, built from that replica's settings once its models are loaded.

    Serve calls this through ``Gateway.__serve_build_asgi_app__`` after ``__init__``, so the request-size limit and
    every other limit are read from the settings the deployment was built with: there is no app without them.
    """
    g = gateway
    max_request_bytes = g.settings.serve.max_request_bytes
    api = FastAPI(title="dynagen", description="Step recommendation, prompt routing and single-image generation.")

    @api.middleware("http")
    async def limits_and_metrics(request: Request, call_next):
        t0 = time.perf_counter()
        denied = None
        if g.key_digest is not None and request.url.path not in OPEN_PATHS:
            denied = auth_problem(request.headers.get("authorization"), g.key_digest)
        err = None if denied else check_content_length(request.headers.get("content-length"), max_request_bytes)
        if denied:
            response = JSONResponse({"detail": denied}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        else:
            response = JSONResponse(err.body(), status_code=err.status) if err else await call_next(request)
        tag = endpoint_tag(request.url.path)
        g.m_requests.inc(1, tags={"endpoint": tag, "status": str(response.status_code)})
        g.m_latency.observe((time.perf_counter() - t0) * 1000, tags={"endpoint": tag})
        return response

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse(clean_validation_errors(exc.errors()), status_code=422)

    @api.exception_handler(ClientError)
    async def client_error(request: Request, exc: ClientError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @api.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):
        # Server bugs only (client mistakes are handled above); the body says nothing about the request or server.
        log.error("dynagen: unhandled error on %s: %s", request.url.path, one_line(exc))
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @api.post("/v1/steps", response_model=StepsResponse)
    async def steps(req: StepsRequest):
        return await g.steps(req)

    @api.post("/v1/route", response_model=RouteResponse)
    async def route(req: RouteRequest):
        return await g.route(req)

    @api.post("/v1/images", responses={200: {"content": {"image/png": {}}}})
    async def image(req: ImageRequest, format: str = Query("png", pattern="^(png|json)$")):
        return await g.image(req, format)

    @api.get("/healthz")
    async def healthz():
        return await g.healthz()

    return api


@serve.deployment
@serve.ingress()  # no app at import: each replica builds its own from its settings (make_api)
class Gateway:
    def __init__(self, settings_json: str, images, key_digest: bytes | None = None):
        from ray.serve import metrics

        self.settings: Settings = settings_from_json(settings_json)
        self.key_digest = key_digest  # None = open (loopback without api_key_on_loopback); see build_app
        s = self.settings
        self.images = images
        threads = _threads(s.serve.ingress_num_cpus)
        self.predictor, self.router, self.why = None, None, {}
        try:
            from actors.stepsaver import StepPredictor

            self.predictor = StepPredictor.load(s.images.stepsaver, num_threads=threads)
        except Exception as e:  # no trained artifact yet: /v1/steps and steps="auto" answer 503
            self.why["stepsaver"] = f"StepSaver not loaded ({one_line(e)})"
        try:
            from actors.router import get_router

            self.router = get_router(s.llm.router, s.llm.router_path, num_threads=threads)
        except Exception as e:
            self.why["router"] = f"router not loaded ({one_line(e)})"
        for why in self.why.values():
            log.warning("dynagen: %s", why)
        self.max_chars = min(s.serve.max_prompt_chars, self.predictor.config.max_prompt_chars) if self.predictor \
            else s.serve.max_prompt_chars
        self._predict_batch.set_max_batch_size(s.serve.steps_max_batch_size)
        self._predict_batch.set_batch_wait_timeout_s(s.serve.steps_batch_wait_timeout_s)
        self.m_requests = metrics.Counter("dynagen_requests_total", description="HTTP requests by endpoint and status.",
                                          tag_keys=("endpoint", "status"))
        self.m_latency = metrics.Histogram("dynagen_request_latency_ms", description="Request latency (ms).",
                                           boundaries=LATENCY_BUCKETS_MS, tag_keys=("endpoint",))
        self.m_steps = metrics.Histogram("dynagen_steps", description="Step counts predicted (/v1/steps) or used "
                                         "(/v1/images).", boundaries=STEPS_BUCKETS, tag_keys=("endpoint",))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self)

    # -- StepSaver, batched across concurrent requests
    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)  # real values set in __init__ from settings
    async def _predict_batch(self, batches: list[list[str]]) -> list[list[int]]:
        uniq = list(dict.fromkeys(p for b in batches for p in b))  # repeated prompts are encoded once
        steps = dict(zip(uniq, await asyncio.to_thread(self.predictor.predict_steps, uniq)))
        return [[steps[p] for p in b] for b in batches]

    async def steps(self, req: StepsRequest):
        check_prompts(req.prompts, self.max_chars, self.settings.serve.max_batch_prompts)
        if self.predictor is None:
            return _unavailable("steps", self.why["stepsaver"])
        steps = await self._predict_batch(req.prompts)
        for v in steps:
            self.m_steps.observe(v, tags={"endpoint": "/v1/steps"})
        return StepsResponse(steps=steps)

    async def route(self, req: RouteRequest):
        check_prompts(req.prompts, self.settings.serve.max_prompt_chars, self.settings.serve.max_batch_prompts)
        if self.router is None:
            return _unavailable("route", self.why["router"])
        share = self.settings.llm.large_share if req.large_share is None else req.large_share
        threshold = self.router.threshold(share)
        scores = await asyncio.to_thread(self.router.score, req.prompts)
        results = [RouteResult(route="large" if sc >= threshold else "small", score=float(sc)) for sc in scores]
        # Share 0 or 1 gives a threshold of ±inf, which JSON cannot carry: null then.
        return RouteResponse(router=self.router.name, large_share=share,
                             threshold=None if math.isinf(threshold) else threshold, results=results)

    async def image(self, req: ImageRequest, format: str):
        s = self.settings.serve
        check_prompt(req.prompt, ("body", "prompt"), self.max_chars)
        check_steps(req.steps, s.max_steps)
        if req.steps == "auto":
            if self.predictor is None:
                return _unavailable("steps='auto'", self.why["stepsaver"] + "; pass an integer 'steps'")
            steps = (await self._predict_batch([req.prompt]))[0]
        else:
            steps = int(req.steps)
        result: ImageResult = await self.images.generate.remote(req.prompt, req.seed, steps)
        if result.error:
            return JSONResponse({"detail": result.error}, status_code=result.status, headers=result.headers())
        self.m_steps.observe(steps, tags={"endpoint": "/v1/images"})
        if format == "json":
            return JSONResponse(result.to_json(), headers=result.headers())
        return Response(result.png, media_type="image/png", headers=result.headers())

    async def healthz(self):
        async def images_status() -> str:
            return await self.images.health.remote()

        try:
            images = await asyncio.wait_for(images_status(), timeout=5.0)
        except Exception as e:
            images = f"no answer ({type(e).__name__})"
        components = {"stepsaver": self.why.get("stepsaver", "ok"), "router": self.why.get("router", "ok"),
                      "images": images}
        ok = all(v == "ok" for v in components.values())
        # 200 either way: the process serves what it can; "degraded" tells an operator which model is missing.
        return {"status": "ok" if ok else "degraded", "components": components}


# 3. Wiring -----------------------------------------------------------------------------------------------------


def build_app(settings: Settings):
    """The Serve application (Gateway → ImageGenerator) with replicas, CPUs and autoscaling from ``settings.serve``.

    Secrets never travel to replicas: the settings payload leaves out the storage keys (the app does not use S3) and
    the API key, of which the Gateway gets only the digest. Raises ValueError (one line) for settings the app cannot
    honour, :class:`AuthConfigError` (a ValueError) when the app would be open beyond loopback.
    """
    s = settings.serve
    payload = settings.model_dump_json(exclude=secret_exclude())
    # The replicas get the key's digest, not the key: it stays out of deployment args, Serve's config and logs.
    digest = None
    if s.auth_required():
        if s.api_key is None:
            raise AuthConfigError(
                f"serve.host {s.host} is not loopback: set serve.api_key (env DYNAGEN_SERVE__API_KEY) so callers "
                "need a bearer token, or bind 127.0.0.1")
        digest = key_digest(s.api_key.get_secret_value())
    images = ImageGenerator.options(
        name="ImageGenerator",
        ray_actor_options={"num_cpus": s.images_num_cpus, "num_gpus": s.images_num_gpus},
        max_ongoing_requests=max(s.images_max_ongoing_requests, s.max_batch_size),
        autoscaling_config={"min_replicas": s.images_min_replicas, "max_replicas": s.images_max_replicas,
                            "initial_replicas": max(1, s.images_min_replicas),
                            "target_ongoing_requests": s.images_target_ongoing_requests},
    ).bind(payload)
    return Gateway.options(
        name="Gateway",
        ray_actor_options={"num_cpus": s.ingress_num_cpus},
        max_ongoing_requests=max(s.ingress_max_ongoing_requests, s.steps_max_batch_size),
        autoscaling_config={"min_replicas": s.ingress_min_replicas, "max_replicas": s.ingress_max_replicas,
                            "initial_replicas": max(1, s.ingress_min_replicas),
                            "target_ongoing_requests": s.ingress_target_ongoing_requests},
    ).bind(payload, images, digest)


def app_builder(args: dict):
    """Application builder for ``serve run dynagen.app.serve.deployments:app_builder`` and the RayService ``import_path``.

    ``args`` are dotted settings keys (as in the manifest's ``args:``), layered over file/env like CLI flags.
    """
    from dynagen.core.settings import load_settings

    settings, _ = load_settings(None, {str(k): v for k, v in (args or {}).items()})
    return build_app(settings)


DIRECT_INGRESS_FLAG = "RAY_SERVE_ENABLE_DIRECT_INGRESS"


def direct_ingress_env(s: ServeSettings) -> dict[str, str]:
    """Env vars a Ray cluster needs, set before it starts, for ``serve.direct_ingress``: the flag, and a port range
    that starts at ``serve.port`` so the (single) ingress replica of a node listens where clients expect it."""
    return {DIRECT_INGRESS_FLAG: "1", "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(s.port),
            "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(s.port + 1)}


def start(settings: Settings, ready_timeout_s: float = 120.0) -> str:
    """Start Serve's HTTP proxy on ``serve.host:port`` (Ray must be up) and deploy the app; returns its base URL.

    Returns once every replica is up (models loaded); redeploying with other settings updates the app in place.
    With ``serve.direct_ingress`` the Gateway replica serves ``serve.port`` itself (Serve's proxy, which Ray still
    starts on the head node, gets ``serve.port + 1``), and this waits (up to ``ready_timeout_s``) until it answers
    ``/healthz``.
    """
    import os

    s = settings.serve
    if s.direct_ingress and os.environ.get(DIRECT_INGRESS_FLAG) != "1":
        raise ValueError(f"serve.direct_ingress needs {DIRECT_INGRESS_FLAG}=1 in the cluster's env before Ray starts "
                         "(dynagen serve sets it for its embedded Ray)")
    # Direct ingress still runs Serve's proxy on the head node: it takes the next port, the replica serve.port.
    serve.start(http_options={"host": s.host, "port": s.port + 1 if s.direct_ingress else s.port})
    serve.run(build_app(settings), name=s.app_name, route_prefix="/", blocking=False)
    url = f"http://{s.host}:{s.port}"
    if s.direct_ingress:
        _wait_until_up(url + "/healthz", ready_timeout_s)
    return url


def _wait_until_up(url: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, OSError) as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ingress replica did not answer {url} within {timeout_s:.0f} s ({one_line(e)})")
            time.sleep(0.5)

"""The online app's HTTP contract: request/response models and pure helpers (no Ray, no FastAPI, no torch).

:mod:`dynagen.app.serve.deployments` wires these into Ray Serve deployments. Everything here is testable without a server.

Status codes for client mistakes (never a 500):

* 422: a body that is not JSON, a missing/unknown/wrongly typed field, an empty prompt, an out-of-range number;
  the response names the field (``loc``) and never echoes the submitted value (prompts may hold secrets).
* 413: a body over ``serve.max_request_bytes``, a prompt over ``serve.max_prompt_chars``, or more than
  ``serve.max_batch_prompts`` prompts in one request.
* 503: a model the app could not load (StepSaver, router or diffusion model); the rest keeps serving.

And for callers: 401 with a one-line reason when the app requires a bearer token (``serve.api_key``; always when
bound beyond loopback) and the request's ``Authorization`` header is missing, malformed or wrong. ``/healthz`` is
open so probes and load balancers need no secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from dynagen.core.records import prompt_problem

# Headers a /v1/images response carries, so clients (and tests) can see how it was batched.
H_STEPS = "X-Dynagen-Steps"
H_SEED = "X-Dynagen-Seed"
H_BATCH_ID = "X-Dynagen-Batch-Id"
H_BATCH_SIZE = "X-Dynagen-Batch-Size"
H_BATCH_STEPS = "X-Dynagen-Batch-Steps"  # distinct step counts inside the batch that made this image (always one)
H_STEPS_RUN = "X-Dynagen-Steps-Run"  # steps actually run: below X-Dynagen-Steps when early stopping ended the image

SEED_MAX = 2**32 - 1  # torch.Generator.manual_seed accepts 64-bit, but 32-bit seeds are what clients pass around
ENDPOINTS = ("/v1/steps", "/v1/route", "/v1/images", "/healthz")
# Prometheus histogram buckets (ms): the /v1/steps target is p50 ≤ 20 ms / p99 ≤ 100 ms; images take seconds.
LATENCY_BUCKETS_MS = [2, 5, 10, 20, 35, 50, 75, 100, 200, 500, 1000, 2500, 5000, 10000, 30000]
STEPS_BUCKETS = [4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100, 150]


# 1. Request and response models ------------------------------------------------------------------------------


class _Body(BaseModel):
    # An unknown field is a typo ("prompt" for "prompts"): refuse it by name rather than ignore it.
    model_config = ConfigDict(extra="forbid")


class StepsRequest(_Body):
    prompts: list[str] = Field(..., min_length=1, description="Prompts to score (at most serve.max_batch_prompts).")


class StepsResponse(BaseModel):
    steps: list[int]


class RouteRequest(_Body):
    prompts: list[str] = Field(..., min_length=1, description="Prompts to route.")
    large_share: float | None = Field(
        None, ge=0, le=1, description="Target share sent to the large model; unset = settings.llm.large_share."
    )


class RouteResult(BaseModel):
    route: Literal["small", "large"]
    score: float


class RouteResponse(BaseModel):
    router: str
    large_share: float
    threshold: float | None = Field(description="Scores ≥ this go large; null when the share is 0 or 1 (±inf).")
    results: list[RouteResult]


class ImageRequest(_Body):
    prompt: str = Field(..., description="Text prompt.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Same prompt + seed + steps = same image.")
    # Strict int: "12" or true are typos, not step counts.
    steps: Literal["auto"] | Annotated[int, Field(strict=True, ge=1)] = Field(
        "auto", description="'auto' = StepSaver's prediction; an integer fixes the steps (≤ serve.max_steps)."
    )


class ImageJSON(BaseModel):
    """``/v1/images?format=json``: the PNG base64-encoded plus how it was made."""

    image_png_b64: str
    steps: int
    seed: int
    width: int
    height: int
    batch_id: str
    batch_size: int
    batch_steps: list[int]
    steps_run: int  # < steps when per-sample early stopping (images.early_stop) ended this image sooner


# 2. Client errors --------------------------------------------------------------------------------------------


@dataclass
class ClientError(Exception):
    """A client mistake found after parsing: HTTP status, the field's location, and a message without its value."""

    status: int
    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"

    def body(self) -> dict[str, Any]:
        return {"detail": [{"loc": list(self.loc), "msg": self.msg, "type": self.type}]}


def clean_validation_errors(errors: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """FastAPI/pydantic errors without ``input``/``ctx``/``url``: the field and the reason, never the value sent."""
    out = []
    for e in errors:
        out.append({"loc": [p if isinstance(p, (str, int)) else str(p) for p in e.get("loc", ())],
                    "msg": str(e.get("msg", "invalid value")), "type": str(e.get("type", "value_error"))})
    return {"detail": out}


def check_prompt(prompt: str, loc: tuple[str | int, ...], max_chars: int) -> None:
    """Raise ClientError for a prompt the batch jobs would fail too (``records.prompt_problem``): 413 for one over
    ``max_chars``, 422 otherwise (empty, whitespace-only, NUL byte)."""
    problem = prompt_problem(prompt, max_chars)
    if problem is not None:
        code = 413 if problem.kind == "too_long" else 422
        raise ClientError(code, loc, problem.reason, "prompt_too_long" if code == 413 else f"prompt_{problem.kind}")


def check_prompts(prompts: Sequence[str], max_chars: int, max_batch: int) -> None:
    """Check a /v1/steps or /v1/route batch: size (413), then each prompt (first bad one named)."""
    if len(prompts) > max_batch:
        raise ClientError(413, ("body", "prompts"), f"{len(prompts)} prompts in one request (max {max_batch})",
                          "too_many_prompts")
    for i, p in enumerate(prompts):
        check_prompt(p, ("body", "prompts", i), max_chars)


def check_steps(steps: int | str, max_steps: int) -> None:
    if isinstance(steps, int) and steps > max_steps:
        raise ClientError(422, ("body", "steps"), f"steps must be 'auto' or an integer in 1..{max_steps}", "steps_range")


def check_content_length(header: str | None, max_bytes: int) -> ClientError | None:
    """413 for a declared body over the limit; a malformed header is a 400-class mistake too (422)."""
    if header is None:
        return None
    try:
        n = int(header)
    except ValueError:
        return ClientError(422, ("header", "content-length"), "content-length is not an integer", "header_invalid")
    if n > max_bytes:
        return ClientError(413, ("body",), f"request body is {n} bytes (max {max_bytes})", "body_too_large")
    return None


# 3. Who may call ----------------------------------------------------------------------------------------------

OPEN_PATHS = ("/healthz",)  # no token: liveness probes and load balancers


def key_digest(key: str) -> bytes:
    """SHA-256 of the API key: what replicas hold and compare (the key itself is not sent to them)."""
    return hashlib.sha256(key.encode()).digest()


def auth_problem(authorization: str | None, digest: bytes) -> str | None:
    """None when ``Authorization: Bearer <token>`` matches the key whose digest is ``digest``; else a one-line reason
    for the 401 (it never repeats what was sent). The digests are compared in constant time."""
    if not authorization:
        return "missing bearer token: send 'Authorization: Bearer <serve.api_key>'"
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "malformed Authorization header: expected 'Bearer <token>'"
    if not hmac.compare_digest(key_digest(token.strip()), digest):
        return "invalid bearer token"
    return None


# 4. Batching by step count -----------------------------------------------------------------------------------


@dataclass
class BatchRecord:
    """What one @serve.batch call of the image deployment ran; returned with every image of the batch."""

    batch_id: str
    size: int
    steps: list[int]  # distinct step counts of the requests in it; one by construction

    def headers(self) -> dict[str, str]:
        return {H_BATCH_ID: self.batch_id, H_BATCH_SIZE: str(self.size),
                H_BATCH_STEPS: ",".join(str(s) for s in self.steps)}


@dataclass
class ImageResult:
    """One generated image as it crosses from the image deployment to the ingress."""

    png: bytes = b""
    steps: int = 0
    seed: int = 0
    width: int = 0
    height: int = 0
    batch: BatchRecord | None = None
    error: str | None = None  # "unavailable: ..." (503) or "generation failed: ..." (500)
    status: int = 200
    steps_run: int | None = None  # None = all of `steps`

    def headers(self) -> dict[str, str]:
        h = {H_STEPS: str(self.steps), H_SEED: str(self.seed), H_STEPS_RUN: str(self.ran)}
        if self.batch is not None:
            h.update(self.batch.headers())
        return h

    def to_json(self) -> dict[str, Any]:
        b = self.batch or BatchRecord("", 0, [])
        return ImageJSON(image_png_b64=base64.b64encode(self.png).decode("ascii"), steps=self.steps, seed=self.seed,
                         width=self.width, height=self.height, batch_id=b.batch_id, batch_size=b.size,
                         batch_steps=b.steps, steps_run=self.ran).model_dump()

    @property
    def ran(self) -> int:
        return self.steps if self.steps_run is None else self.steps_run


def distinct_steps(items: Sequence[tuple[str, int, int]]) -> list[int]:
    """Sorted distinct step counts of (prompt, seed, steps) items: the evidence that a batch did not mix them."""
    return sorted({int(s) for _, _, s in items})


@dataclass
class Percentiles:
    """Latency summary for the bench (ms)."""

    values: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        import numpy as np

        if not self.values:
            return {"n": 0}
        a = np.asarray(self.values)
        return {"n": int(len(a)), "p50_ms": round(float(np.percentile(a, 50)), 2),
                "p90_ms": round(float(np.percentile(a, 90)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
                "mean_ms": round(float(a.mean()), 2), "max_ms": round(float(a.max()), 2)}


def endpoint_tag(path: str) -> str:
    """Metric tag for a request path; unknown paths share one tag so scanners cannot blow up cardinality."""
    return path if path in ENDPOINTS else "other"

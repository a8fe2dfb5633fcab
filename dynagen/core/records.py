"""Typed records that cross boundaries: one prompt row, one generated image's metadata or LLM response, one run
summary per job."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Object keys are built from ids, so ids are restricted to a safe alphabet (no '/', no '..', no '%').
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MAX_SEED = 2**32 - 1
MAX_STEPS = 1000

# Row outcomes, and what a rerun does with each: one rule, used by the sinks' resume, the audit and the nightly
# (runtime errors are worded by dynagen.core.errors.runtime_error).
OK = "ok"
FAILED = "failed"  # the input is bad (empty prompt, bad seed, too long): final, a rerun would fail it the same way
ERROR = "error"  # a good row the run could not finish (the model raised, a worker died): a rerun retries it
FINAL_STATUSES = (OK, FAILED)
_RANK = {ERROR: 0, FAILED: 1, OK: 2}


def outcomes(ids, statuses) -> dict[str, str]:
    """Per id its outcome over every run of a destination: a retried row's ok (or input failure) supersedes its
    earlier runtime error; an id with only errors stays ERROR."""
    best: dict[str, str] = {}
    for i, s in zip(ids, statuses):
        if i not in best or _RANK.get(s, 0) > _RANK.get(best[i], 0):
            best[i] = s
    return best


def outcome_totals(ids, statuses) -> tuple[int, int]:
    """(ok, not ok) over the distinct ids, each by its outcome (:func:`outcomes`): a destination's standing."""
    best = outcomes(ids, statuses)
    ok = sum(1 for s in best.values() if s == OK)
    return ok, len(best) - ok


@dataclass(frozen=True)
class PromptProblem:
    """Why a prompt cannot be used: ``kind`` (type / empty / nul / too_long, for HTTP codes) and a one-line reason."""

    kind: str
    reason: str


def prompt_problem(prompt: Any, max_chars: int | None = None) -> PromptProblem | None:
    """The one rule for a usable prompt (batch sources, StepSaver, the router and Serve all apply it): a string,
    not empty or whitespace-only, no NUL byte, at most ``max_chars`` characters. None = usable."""
    if not isinstance(prompt, str):
        return PromptProblem("type", f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        return PromptProblem("empty", "prompt is empty" if prompt == "" else "prompt is whitespace-only")
    if "\x00" in prompt:
        return PromptProblem("nul", "prompt contains a NUL byte")
    if max_chars is not None and len(prompt) > max_chars:
        return PromptProblem("too_long", f"prompt too long ({len(prompt)} characters, max {max_chars})")
    return None


# Columns every stage passes along (the normalized prompt row).
ROW_COLUMNS = ("id", "prompt", "negative_prompt", "seed", "steps", "status", "error")

# steps = steps actually run; planned_steps = the budget (differs only when early stopping ended the image sooner).
METADATA_COLUMNS = (
    "id", "prompt", "negative_prompt", "seed", "steps", "planned_steps", "stopped_early", "predicted_steps", "model",
    "scheduler", "width", "height", "batch_id", "batch_size", "image_uri", "status", "error", "latency_ms", "unet_evals",
    "source", "run_id", "created_at",
)


def metadata_schema():
    import pyarrow as pa

    s, i = pa.string(), pa.int64()
    types = dict(
        id=s, prompt=s, negative_prompt=s, seed=i, steps=i, planned_steps=i, stopped_early=pa.bool_(), predicted_steps=i,
        model=s, scheduler=s, width=i, height=i, batch_id=s, batch_size=i, image_uri=s, status=s, error=s,
        latency_ms=pa.float64(), unet_evals=i, source=s, run_id=s, created_at=pa.timestamp("us", tz="UTC"),
    )
    return pa.schema([(c, types[c]) for c in METADATA_COLUMNS])


def reason_key(error: str | None) -> str:
    """The kind of a failed row's reason, for a run's failure counts: its first reason without the row's own
    values (the id or seed it quoted, a line number), so rows failing alike count together.
    'invalid id \'../x\' (allowed: …)' → 'invalid id'; 'invalid JSON line 3 (Expecting value)' → 'invalid JSON line'."""
    import re

    first = (error or "").split("; ")[0].strip()
    if first.startswith("generation failed"):
        return first[:80]  # the cause is the point: keep the exception's name and message
    key = re.split(r"\s*['\"(]", first, maxsplit=1)[0]
    return re.sub(r"\s+\d+$", "", key)[:80] or "unknown"


def content_id(*parts: Any) -> str:
    """A stable id from a row's content: reruns and re-reads of the same row get the same id."""
    h = hashlib.sha256("\x1f".join("" if p is None else str(p) for p in parts).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:20]


def file_fingerprint(path) -> str:
    """sha256 prefix of a file's bytes ('' for a folder or a missing file): artifacts record what they were made from
    by name and fingerprint, never by a path of the machine."""
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else ""


def model_fingerprint(model) -> str:
    """The fingerprint of a diffusers folder's denoiser weights (unet/, or transformer/ for SD3, FLUX, PixArt-Σ, Sana;
    '' if not readable here): tells a stale predictor or signal apart from the model it was calibrated on."""
    root = Path(model)
    files = sorted([*root.glob("unet/*.safetensors"), *root.glob("transformer/*.safetensors")]) if root.is_dir() else []
    return file_fingerprint(files[0]) if files else ""


def artifact_fingerprint(folder) -> str:
    """A small artifact folder (StepSaver, router) by its config and weights together ('' when absent): what a
    run summary records as the StepSaver it used."""
    root = Path(folder)
    files = sorted([*root.glob("*.safetensors"), *root.glob("config.json")]) if root.is_dir() else []
    if not files:
        return ""
    return hashlib.sha256("\x1f".join(f"{f.name}:{file_fingerprint(f)}" for f in files).encode()).hexdigest()[:16]


def seed_from_id(row_id: str) -> int:
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:4], "big")


MAX_FAILURES = 50  # failed rows a run summary lists by id (counts per reason cover the rest)
RUNNING = "running"  # a run's status in runs/<run_id>.json while its sink writes (ok / failed when it ends)


@dataclass
class RunSummary:
    """What ``DEST/runs/<run_id>.json`` holds."""

    run_id: str
    source: str
    dest: str
    started_at: str
    # running (written when the sink starts; stays so if the driver died) | ok | failed (the run stopped: `error`
    # says why; finished rows are kept)
    status: str = "ok"
    error: str = ""
    finished_at: str = ""
    wall_s: float = 0.0
    ok: int = 0
    failed: int = 0  # rows of this run that did not produce an image (input failures and runtime errors)
    retryable: int = 0  # of those, runtime errors: the next run of the same command tries them again
    skipped: int = 0  # already done by an earlier run (resume)
    duplicates: int = 0  # repeated ids in the input, generated once
    images_per_s: float = 0.0
    denoising_steps: int = 0  # Σ steps over generated rows
    unet_evals: int = 0  # measured UNet sample-evaluations (×2 with classifier-free guidance)
    batches: int = 0
    mean_batch_fill: float = 0.0
    steps_histogram: dict[str, int] = field(default_factory=dict)
    predicted_steps_histogram: dict[str, int] = field(default_factory=dict)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    # Per step count run: images, mean milliseconds per image (its batch's time / batch size), share of the run's
    # UNet evaluations.
    steps_breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)  # the first MAX_FAILURES: id, status, error
    model_fingerprint: str = ""  # SHA-256 prefix of the UNet weights (model_fingerprint)
    stepsaver_fingerprint: str = ""  # SHA-256 prefix of StepSaver's config + weights; '' with fixed steps
    bad_shards: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    # The destination after this run, every run counted (per id, its latest outcome): what a night is judged on.
    dest_ok: int = 0
    dest_failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The LLM job's records ----------------------------------------------------------------------------------------

ROUTES = ("small", "large")  # where the router sends a prompt
RESPONSE_COLUMNS = (
    "id", "prompt", "route", "router_score", "model", "response", "prompt_tokens", "completion_tokens", "latency_ms",
    "truncated", "status", "error", "source", "run_id", "created_at",
)
def response_schema():
    import pyarrow as pa

    s, i = pa.string(), pa.int64()
    types = dict(
        id=s, prompt=s, route=s, router_score=pa.float64(), model=s, response=s, prompt_tokens=i,
        completion_tokens=i, latency_ms=pa.float64(), truncated=pa.bool_(), status=s, error=s, source=s, run_id=s,
        created_at=pa.timestamp("us", tz="UTC"),
    )
    return pa.schema([(c, types[c]) for c in RESPONSE_COLUMNS])


@dataclass
class PoolStats:
    """One model pool's share of the run."""

    model: str = ""
    rows: int = 0
    ok: int = 0
    failed: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_s: float = 0.0  # Σ generation time over the pool's batches (all actors)
    tokens_per_s: float = 0.0  # completion tokens / busy_s: per-actor generation throughput


@dataclass
class LLMRunSummary:
    """What ``DEST/runs/<run_id>.json`` holds."""

    run_id: str
    source: str
    dest: str
    started_at: str
    router: str = ""
    target_large_share: float = 0.0
    share_mode: str = "calibrated"
    threshold: float | None = None
    status: str = "ok"  # running (while the sink writes) | ok | failed (the run stopped: `error` says why)
    error: str = ""
    finished_at: str = ""
    wall_s: float = 0.0
    ok: int = 0
    failed: int = 0  # rows of this run not answered (input failures and runtime errors)
    retryable: int = 0  # of those, runtime errors: the next run retries them
    skipped: int = 0  # done by an earlier run (resume)
    duplicates: int = 0  # repeated ids in the input, answered once
    routes: dict[str, int] = field(default_factory=dict)  # small / large / none (failed before routing)
    realised_large_share: float | None = None  # large / (small + large) over rows routed in this run
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    bad_shards: list[dict[str, str]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    dest_ok: int = 0  # the destination after this run, every run counted (each id by its latest outcome)
    dest_failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

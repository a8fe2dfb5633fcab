"""Nightly bulk generation: a declared batch of image and/or LLM jobs for one date.

A nightly file (YAML, schema ``NightlySpec``) names prompt sources and an output prefix with a ``{date}`` template,
the jobs, their step policy and limits. ``run_night`` runs every job for one date, each into
``<output>/<job name>``. Idempotent per date: the jobs resume (ids already written are skipped), so rerunning a
finished or half-finished night completes it without redoing work. A night fails if any job fails; the result
says which and why.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import date as Date
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dynagen.core.errors import one_line
from dynagen.core.settings import Scheduler, Settings

PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class NightlyError(ValueError):
    """A bad nightly file, date or source; the message is one line naming the problem."""


def _only_date_placeholder(value: str, what: str) -> str:
    for name in PLACEHOLDER.findall(value):
        if name != "date":
            raise ValueError(f"{what} has an unknown placeholder '{{{name}}}' (only {{date}} is allowed)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # unknown keys are typos


class _Job(_Strict):
    name: str = Field(pattern=NAME, description="Job name; its output goes to <output>/<name>.")
    prompts: str = Field(description="Prompt source (file, folder, glob or s3:// prefix); may use {date}.")
    limit: int | None = Field(None, ge=1, description="Read at most this many prompts.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Settings overrides for this job only.")

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompts must name a source")
        return _only_date_placeholder(v, "prompts")


class ImageJob(_Job):
    kind: Literal["images"]
    steps: Literal["auto"] | int | None = Field(
        None, description="Step policy: 'auto' (StepSaver per prompt) or a fixed count; unset = settings.")
    scheduler: Scheduler | None = None

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: Any) -> Any:
        if isinstance(v, int) and not 1 <= v <= 1000:
            raise ValueError("steps must be 'auto' or an integer in 1..1000")
        return v

    def overrides(self) -> dict[str, Any]:
        return {"images": {k: v for k, v in (("steps", self.steps), ("scheduler", self.scheduler),
                                             ("limit", self.limit)) if v is not None}}


class LLMJob(_Job):
    kind: Literal["llm"]
    large_share: float | None = Field(None, ge=0, le=1, description="Target share of prompts for the large model.")

    def overrides(self) -> dict[str, Any]:
        return {"llm": {k: v for k, v in (("large_share", self.large_share), ("limit", self.limit)) if v is not None}}


class Limits(_Strict):
    max_prompts_per_job: int | None = Field(None, ge=1, description="Cap on prompts any one job reads per night.")
    max_failed_share: float = Field(
        0.1, ge=0, le=1, description="A job whose failed rows exceed this share of the rows it processed fails.")
    stop_on_failure: bool = Field(False, description="Skip the remaining jobs once one fails (default: run them all).")


class NightlySpec(_Strict):
    name: str = Field("nightly", pattern=NAME)
    output: str = Field(description="Output prefix (folder or s3://); must contain {date}.")
    settings: dict[str, Any] = Field(default_factory=dict, description="Settings overrides for every job.")
    limits: Limits = Limits()
    jobs: list[Annotated[Union[ImageJob, LLMJob], Field(discriminator="kind")]] = Field(min_length=1)

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        _only_date_placeholder(v, "output")
        if "{date}" not in v:
            raise ValueError("output must contain {date} so that each night has its own place (and can resume)")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> "NightlySpec":
        seen = set()
        for j in self.jobs:
            if j.name in seen:
                raise ValueError(f"two jobs are named '{j.name}'")
            seen.add(j.name)
        return self

    def output_for(self, night: Date) -> str:
        return self.output.replace("{date}", night.isoformat()).rstrip("/")

    def job_dest(self, job: ImageJob | LLMJob, night: Date) -> str:
        return f"{self.output_for(night)}/{job.name}"

    def job_source(self, job: ImageJob | LLMJob, night: Date) -> str:
        return job.prompts.replace("{date}", night.isoformat())


# ---- loading -----------------------------------------------------------------------------------------------------


def _first_error(e: ValidationError, where: str) -> str:
    err = e.errors()[0]
    parts = [p for p in err["loc"] if not str(p).startswith(("function-", "tagged-union"))]
    if len(parts) >= 3 and parts[0] == "jobs" and parts[2] in ("images", "llm"):
        del parts[2]  # the union's tag (the job's kind), not a key the user wrote
    loc = ".".join(str(p) for p in parts)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key missing"
    return f"{where}: '{loc}': {msg}" if loc else f"{where}: {msg}"


def parse_spec(data: Any, where: str = "nightly file") -> NightlySpec:
    if not isinstance(data, dict):
        raise NightlyError(f"{where} must be a mapping (name, output, jobs, ...), got {type(data).__name__}")
    try:
        spec = NightlySpec.model_validate(data)
    except ValidationError as e:
        raise NightlyError(_first_error(e, where)) from None
    scopes = [("settings", spec.settings)] + [(f"jobs.{j.name}.settings", j.settings) for j in spec.jobs]
    for scope, overrides in scopes:
        storage = overrides.get("storage") or {}
        for key in ("access_key_id", "secret_access_key"):
            if isinstance(storage, dict) and key in storage:
                raise NightlyError(f"{where}: '{scope}.storage.{key}': credentials do not belong in the nightly file; "
                                   "use AWS_* env vars or a Kubernetes Secret")
    return spec


def load_nightly(path: str | Path) -> NightlySpec:
    """Read and validate a nightly file; NightlyError with one line on any problem."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise NightlyError(f"nightly file not found: {path}") from None
    except yaml.YAMLError as e:
        raise NightlyError(f"nightly file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return parse_spec(data, str(path))


def parse_date(value: str | None) -> Date:
    """YYYY-MM-DD, or today (UTC) when None."""
    if value is None:
        return datetime.now(timezone.utc).date()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            raise ValueError
        return Date.fromisoformat(value)
    except ValueError:
        raise NightlyError(f"bad date '{value}': expected YYYY-MM-DD (e.g. 2026-01-31)") from None


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def job_settings(spec: NightlySpec, job: ImageJob | LLMJob, base: Settings) -> Settings:
    """base settings < nightly ``settings`` < the job's ``settings`` < the job's own fields and limits."""
    tree = base.model_dump()  # python mode keeps SecretStr values as they are
    tree = _merge(tree, spec.settings)
    tree = _merge(tree, job.settings)
    tree = _merge(tree, job.overrides())
    cap = spec.limits.max_prompts_per_job
    if cap is not None:
        section = job.kind if job.kind == "llm" else "images"
        current = tree[section].get("limit")
        tree[section]["limit"] = cap if current is None else min(current, cap)
    try:
        return Settings.model_validate(tree)
    except ValidationError as e:
        raise NightlyError(_first_error(e, f"job '{job.name}' settings")) from None


# ---- running -----------------------------------------------------------------------------------------------------


@dataclass
class JobResult:
    name: str
    kind: str
    source: str
    dest: str
    status: str = "pending"  # ok | failed | skipped (stop_on_failure)
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # done by an earlier attempt of this night
    run_id: str = ""
    error: str = ""


@dataclass
class NightResult:
    name: str
    date: str
    output: str
    started_at: str
    finished_at: str = ""
    jobs: list[JobResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(j.status == "ok" for j in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def lines(self) -> list[str]:
        """The human summary: one line per job, then the verdict."""
        out = []
        for j in self.jobs:
            counts = f"{j.ok} ok, {j.failed} failed, {j.skipped} done earlier"
            tail = f": {j.error}" if j.error else ""
            out.append(f"{j.status.upper():7} {j.kind:6} {j.name}  ({counts})  → {j.dest}{tail}")
        bad = [j.name for j in self.jobs if j.status != "ok"]
        out.append(f"night {self.date} of '{self.name}': " +
                   ("all jobs ok" if not bad else f"FAILED ({len(bad)} of {len(self.jobs)} jobs: {', '.join(bad)})"))
        return out


Runner = Callable[[Settings, str, str], Any]  # (settings, src, dest) -> a run summary with ok/failed/skipped


def default_runners() -> dict[str, Runner]:
    def images(settings: Settings, src: str, dest: str):
        from pipelines.images import run

        return run(settings, src, dest)

    def llm(settings: Settings, src: str, dest: str):
        from pipelines.llm import run

        return run(settings, src, dest)

    return {"images": images, "llm": llm}


def check_sources(spec: NightlySpec, night: Date, settings: Mapping[str, Settings]) -> None:
    """Fail before generating anything if a job's prompt source does not exist (NightlyError naming it)."""
    from dynagen.core.sources import ShardError, list_shards
    from dynagen.core.storage import Storage, StorageError

    for job in spec.jobs:
        src = spec.job_source(job, night)
        try:
            list_shards(src, Storage(src, settings[job.name].storage) if src.startswith("s3://") else None)
        except (ShardError, StorageError) as e:
            raise NightlyError(f"job '{job.name}': prompt source {src}: {e}") from None


def run_night(spec: NightlySpec, night: Date, base: Settings | None = None,
              runners: Mapping[str, Runner] | None = None, log: Callable[[str], None] = print) -> NightResult:
    """Run every job of ``spec`` for ``night``; returns the result (also written to <output>/nightly.json).

    Bad input (invalid settings, a missing source) raises NightlyError before any job starts. A job that fails at
    run time is recorded and the night goes on (unless ``limits.stop_on_failure``).
    """
    from dynagen.core.storage import Storage

    base = base or Settings()
    runners = runners or default_runners()

    # 1. Everything that can be checked before generating: settings per job, then every source.
    per_job = {job.name: job_settings(spec, job, base) for job in spec.jobs}
    check_sources(spec, night, per_job)

    result = NightResult(spec.name, night.isoformat(), spec.output_for(night),
                         started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    result.jobs = [JobResult(j.name, j.kind, spec.job_source(j, night), spec.job_dest(j, night)) for j in spec.jobs]

    # 2. Jobs in order; each resumes whatever an earlier attempt of this night finished.
    for job, res in zip(spec.jobs, result.jobs):
        if spec.limits.stop_on_failure and any(r.status == "failed" for r in result.jobs):
            res.status, res.error = "skipped", "not run: an earlier job failed (limits.stop_on_failure)"
            continue
        log(f"nightly {night}: {job.kind} job '{job.name}' {res.source} → {res.dest}")
        try:
            summary = runners[job.kind](per_job[job.name], res.source, res.dest)
        except Exception as e:  # one job's failure is reported, not fatal to the night
            res.status, res.error = "failed", one_line(e)
            continue
        res.ok, res.failed, res.skipped = summary.ok, summary.failed, summary.skipped
        res.run_id = getattr(summary, "run_id", "")
        # Judged on the destination, every attempt of the night counted: a rerun that skips everything must not
        # turn a failed night green, and rows a retry fixed no longer count against it.
        dest_ok, dest_failed = getattr(summary, "dest_ok", 0), getattr(summary, "dest_failed", 0)
        if dest_ok + dest_failed == 0:  # a runner that reports only this attempt
            dest_ok, dest_failed = res.ok, res.failed
        processed = dest_ok + dest_failed
        if processed and dest_failed / processed > spec.limits.max_failed_share:
            res.status = "failed"
            res.error = (f"{dest_failed} of {processed} rows in the destination failed (> limits.max_failed_share "
                         f"{spec.limits.max_failed_share:g}); see {res.dest}/runs/{res.run_id}.json")
        else:
            res.status = "ok"

    # 3. The night's own record, beside its outputs (overwritten by each attempt: it says where the night stands).
    result.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        import json

        Storage(result.output, base.storage).put_bytes(
            "nightly.json", json.dumps(result.to_dict(), indent=2).encode(), "application/json")
    except Exception as e:
        log(f"warning: could not write {result.output}/nightly.json: {one_line(e)}")
    return result

"""One settings schema for the CLI, jobs and Serve.

Layers, lowest first: field defaults < YAML file (``--config``) < ``DYNAGEN_*`` env vars < CLI flags.
Env names are the dotted key upper-cased with ``__`` between sections: ``DYNAGEN_IMAGES__BATCH_SIZE=16``.
Model folders default to names inside one models directory, ``models_dir`` (``DYNAGEN_MODELS_DIR``), resolved when
settings are built (never at import): unset, it is the checkout's ``models/`` when the code runs from a source
checkout, else the copy of the embedded models a wheel carries in the package (``dynagen/_models``).
``load_settings`` returns the validated model plus where each value came from (for ``dynagen config show``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

ENV_PREFIX = "DYNAGEN_"
# The one list of samplers: the CLI, nightly and actors.diffusion use it. "auto" = the model family's own default
# (ddim for SD 1.x/2.x, euler for SDXL, dpm++ for PixArt-Σ, flow-euler for SD3, FLUX and Sana: actors/families.py).
Scheduler = Literal["auto", "ddim", "euler", "dpm++", "flow-euler"]
SCHEDULER_NAMES: tuple[str, ...] = get_args(Scheduler)
DType = Literal["auto", "float32", "float16", "bfloat16"]  # a diffusion pipeline's weights and activations
DTYPE_NAMES: tuple[str, ...] = get_args(DType)
Batching = Literal["grouped", "continuous"]  # how a diffusion actor batches rows (actors/diffusion.py)
BATCHING_NAMES: tuple[str, ...] = get_args(Batching)
ShareMode = Literal["job", "calibrated", "per_batch"]  # how an LLM job holds its large-model share (pipelines/llm.py)
SHARE_MODE_NAMES: tuple[str, ...] = get_args(ShareMode)


class SettingsError(ValueError):
    """A bad settings file, env var or flag; the message is one line naming the key."""


# 0. Where the embedded models are -------------------------------------------------------------------------------

PACKAGED_MODELS = "_models"  # inside the installed package: what pyproject's package-data puts in a wheel


def _package_dir() -> Path:
    return Path(__file__).resolve().parents[1]  # dynagen/ (this file is dynagen/core/settings.py)


def checkout_root() -> Path | None:
    """The source checkout this code runs from (editable install, Ray Jobs working_dir, the container image), or
    None for an installed wheel. A checkout is the folder above the package holding pyproject.toml and models/."""
    root = _package_dir().parent
    return root if (root / "pyproject.toml").is_file() and (root / "models").is_dir() else None


def default_models_dir() -> tuple[Path, str]:
    """(folder, origin) of the embedded models when ``models_dir`` is not set: the checkout's ``models/``
    (origin 'checkout'), else the package's own copy (origin 'package')."""
    root = checkout_root()
    if root is not None:
        return root / "models", "checkout"
    return _package_dir() / PACKAGED_MODELS, "package"


def _embedded(name: str):
    """A default_factory: the embedded model ``name`` in the default models dir (rebased by Settings.models_dir)."""
    return lambda: str(default_models_dir()[0] / name)


# (section, field, folder name under models_dir): the settings whose default is an embedded model.
EMBEDDED_MODELS = (
    ("images", "model", "tiny-sd"), ("images", "stepsaver", "stepsaver"),
    ("images", "early_stop_signal_path", "early-stop"), ("llm", "router_path", "router"),
    ("llm", "small_model", "llm-small"), ("llm", "large_model", "llm-large"),
)


class _Section(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageSettings(_Section):
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for non-AWS stores (SeaweedFS, MinIO). Falls back to AWS_ENDPOINT_URL."
    )
    region: str | None = Field(None, description="S3 region. Falls back to AWS_REGION / AWS_DEFAULT_REGION, "
                               "else us-east-1.")
    access_key_id: SecretStr | None = Field(
        None, description="S3 access key. Prefer the standard AWS env vars or profile; never printed."
    )
    secret_access_key: SecretStr | None = Field(None, description="S3 secret key; never printed.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to wait for a TCP connection to S3.")
    max_attempts: int = Field(5, ge=1, description="Attempts per S3 request (botocore 'standard' retries, backoff).")


class RaySettings(_Section):
    address: str | None = Field(
        None, description="Ray cluster to join ('auto', 'ray://host:10001'); unset = start an embedded local Ray."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for an embedded local Ray (default: all).")


class ImageSettings(_Section):
    model: str = Field(default_factory=_embedded("tiny-sd"), description="diffusers text-to-image pipeline: a folder, "
                       "or a hub id (org/name) already in the local Hugging Face cache (never downloaded).")
    stepsaver: str = Field(default_factory=_embedded("stepsaver"), description="StepSaver predictor folder.")
    steps: Literal["auto"] | int = Field(
        "auto", description="'auto' = StepSaver predicts per prompt; an int fixes the step count for every prompt."
    )
    scheduler: Scheduler = Field("auto", description="Sampler: auto (the model family's default), ddim, euler, dpm++ "
                                 "(UNet families and PixArt-Σ) or flow-euler (SD3, FLUX, Sana).")
    guidance_scale: float | None = Field(
        None, ge=0, description="Classifier-free guidance; unset = the model folder's default (dynagen.json), else "
        "the pipeline's own (7.5 SD, 5 SDXL, 7 SD3, 3.5 FLUX, 4.5 PixArt-Σ and Sana).",
    )
    dtype: DType = Field(
        "auto", description="Diffusion weights' dtype: auto = float32 on CPU (half precision is emulated there), on a "
        "GPU the family's published one (float16: SD, SDXL, PixArt-Σ; bfloat16: SD3, FLUX, Sana).",
    )
    compile: bool = Field(False, description="torch.compile the denoiser's forward (a minutes-long first batch per "
                          "actor; pays only on long GPU runs).")
    vae_slicing: bool = Field(False, description="Decode a batch's images one at a time (less VAE memory, same images).")
    vae_tiling: bool = Field(False, description="Decode large images in overlapping tiles (less VAE memory; may show "
                             "faint seams; images under the VAE's tile size are unchanged).")
    batch_size: int = Field(8, ge=1, le=1024, description="Images per diffusion batch (all of one step count).")
    group_window: int = Field(
        256, ge=1, description="Rows a diffusion actor groups by step count at once; larger = fuller batches."
    )
    max_prompt_chars: int = Field(4000, ge=1, description="Longer prompts fail their row (recorded, not generated).")
    limit: int | None = Field(None, ge=1, description="Read at most this many prompts.")
    actors_min: int = Field(1, ge=1, description="Diffusion actor pool: minimum size.")
    actors_max: int = Field(1, ge=1, description="Diffusion actor pool: maximum size (autoscales up to it).")
    cpus_per_actor: float = Field(1.0, gt=0, description="CPUs reserved per diffusion actor (sets torch threads).")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per diffusion actor (0 = CPU).")
    skip_bad_shards: bool = Field(False, description="Skip unreadable shards (recorded) instead of stopping the run.")
    early_stop: bool = Field(
        False, description="End each image's denoising once its predicted clean image stops changing (steps = budget)."
    )
    early_stop_signal: Literal["learned", "rate"] = Field(
        "learned", description="Stop rule: 'learned' = the calibrated signal in early_stop_signal_path "
        "(P(x̂0 already passes) ≥ early_stop_level); 'rate' = x̂0's change rate < early_stop_threshold.",
    )
    early_stop_signal_path: str = Field(
        default_factory=_embedded("early-stop"), description="Learned early-stop signal (jobs/calibrate_early_stop.py)."
    )
    early_stop_level: float | None = Field(
        None, gt=0, le=1, description="Learned rule's stopping probability (unset = the level calibrated with it)."
    )
    early_stop_threshold: float = Field(
        0.3, ge=0, description="Rate rule: stop when x̂0's relative change per unit of diffusion time falls below this "
        "(0 = never stop).",
    )
    early_stop_interval: int = Field(2, ge=1, description="Check convergence every this many steps.")
    early_stop_min_steps: int = Field(6, ge=1, description="No image stops before this many steps.")
    adaptive: bool = Field(
        False, description="Adaptive per-sample steps: each image's step sizes follow its own trajectory "
        "(DPM-Solver++(2M) with error control); steps = each image's cap.",
    )
    adaptive_tol: float = Field(
        0.01, gt=0, description="Adaptive steps' local error tolerance (smaller = more steps, closer to the "
        "many-step image).",
    )
    batching: Batching = Field(
        "grouped", description="grouped = batches of one step count within group_window rows; continuous = one "
        "active set of batch_size samples, each on its own step count, a finished sample's slot refilled at the "
        "next UNet call.",
    )

    def load_kwargs(self) -> dict:
        """How ``actors.diffusion.DiffusionCore`` loads the pipeline (dtype, compile, VAE slicing/tiling): one mapping
        for the job and Serve."""
        return dict(dtype=self.dtype, compile=self.compile, vae_slicing=self.vae_slicing, vae_tiling=self.vae_tiling)

    def early_stop_kwargs(self) -> dict:
        """The per-sample arguments (early stop, adaptive steps, batching) of ``actors.diffusion.DiffusionCore``: one
        mapping for the job and Serve."""
        return dict(
            early_stop=self.early_stop, early_stop_threshold=self.early_stop_threshold,
            early_stop_interval=self.early_stop_interval, early_stop_min_steps=self.early_stop_min_steps,
            early_stop_signal=self.early_stop_signal_path if self.early_stop_signal == "learned" else None,
            early_stop_level=self.early_stop_level, adaptive=self.adaptive, adaptive_tol=self.adaptive_tol,
            batching=self.batching,
        )

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, int) and not 1 <= v <= 1000:
            raise ValueError("steps must be 'auto' or an integer in 1..1000")
        return v

    @model_validator(mode="after")
    def _one_per_sample_rule(self) -> "ImageSettings":
        # Checked with the settings, so the CLI refuses it in one line before Ray or a model starts.
        if self.adaptive and self.early_stop:
            raise ValueError("images.adaptive and images.early_stop are two per-sample rules: choose one")
        return self


class LLMSettings(_Section):
    router: str = Field("learned", description="Router name from the registry (learned, random, ...).")
    router_path: str = Field(default_factory=_embedded("router"), description="Learned router artifact folder.")
    large_share: float = Field(0.3, ge=0, le=1, description="Target share of prompts sent to the large model.")
    share_mode: ShareMode = Field(
        "job",
        description="job = score every prompt of the run first, then send its top large_share to the large model "
        "(the realised share equals the target to within one prompt, on any prompt mix); calibrated = the router's "
        "stored threshold for the share (for Serve and streaming: a prompt's route never depends on the others, but "
        "the share drifts on prompts unlike the router's MMLU calibration set); per_batch = the top share of each "
        "router batch.",
    )
    over_context: Literal["truncate", "fail"] = Field(
        "truncate", description="Prompts longer than the model context: keep their last tokens (flagged) or fail the row."
    )
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Cap on prompt tokens below the model context (bounds batch memory); unset = context."
    )
    small_model: str = Field(default_factory=_embedded("llm-small"), description="Small causal LM: HF id, folder, or "
                             "gguf:NAME / gguf:/path/file.gguf (the real embedded small model: gguf:smollm2-135m-instruct). "
                             "The default is a tiny random-weight model for wiring tests.")
    large_model: str = Field(default_factory=_embedded("llm-large"), description="Large causal LM: HF id, folder, or "
                             "gguf:NAME (the real embedded large model: gguf:gemma3-270m). The default is a tiny "
                             "random-weight model for wiring tests.")
    prompt_format: Literal["auto", "chat", "completion"] = Field(
        "auto", description="auto = the chat template for instruction-tuned models that have one (packaged GGUF "
        "models declare theirs), plain completion otherwise; chat / completion force one for both models.",
    )
    stop: list[str] | None = Field(
        None, description="Stop strings that end an answer (besides EOS); unset = none for chat, a blank line or "
        "'\\nQuestion:' for completion.",
    )
    model_cache_dir: str | None = Field(
        None, description="Where gguf: models are dequantised once and kept as safetensors; unset = "
        "$XDG_CACHE_HOME/dynagen/llm or ~/.cache/dynagen/llm.",
    )
    max_new_tokens: int = Field(32, ge=1, le=4096, description="Tokens generated per response.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch.")
    max_prompt_chars: int = Field(8000, ge=1, description="Longer prompts fail their row.")
    limit: int | None = Field(None, ge=1, description="Read at most this many prompts.")
    small_actors_max: int = Field(1, ge=1, description="Small-model actor pool: maximum size.")
    large_actors_max: int = Field(1, ge=1, description="Large-model actor pool: maximum size.")
    cpus_per_actor: float = Field(0.5, gt=0, description="CPUs per LLM actor.")
    gpus_per_actor: float = Field(0.0, ge=0, description="GPUs per LLM actor (0 = CPU).")


MIN_API_KEY_CHARS = 16


class ServeSettings(_Section):
    """The online app (``dynagen serve``): HTTP binding, request limits, batching and autoscaling."""

    host: str = Field("127.0.0.1", description="HTTP bind address; any address but loopback requires serve.api_key.")
    api_key: SecretStr | None = Field(
        None, description="Bearer token every route but /healthz requires (Authorization: Bearer <key>) when host is "
        "not loopback. Set it by env (DYNAGEN_SERVE__API_KEY, e.g. from a Kubernetes Secret), at least 16 characters "
        "(e.g. `openssl rand -hex 32`); never printed or logged.",
    )
    api_key_on_loopback: bool = Field(False, description="Require serve.api_key on a loopback bind too.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    app_name: str = Field("dynagen", description="Ray Serve application name.")
    max_prompt_chars: int = Field(4000, ge=1, description="Longer prompts are refused with 413.")
    max_batch_prompts: int = Field(256, ge=1, description="Most prompts in one /v1/steps or /v1/route request (413 above).")
    max_request_bytes: int = Field(1_048_576, ge=1024, description="Larger request bodies are refused with 413.")
    max_steps: int = Field(150, ge=1, le=1000, description="Largest explicit 'steps' a /v1/images request may ask for.")
    max_batch_size: int = Field(8, ge=1, description="Images per @serve.batch call (images.batching=grouped: one step "
                                "count per batch), or the active set's size (continuous).")
    batch_wait_timeout_s: float = Field(0.05, ge=0, description="How long an image batch waits to fill up.")
    batching: Literal["auto", "grouped", "continuous"] = Field(
        "auto", description="How image replicas batch requests: auto = continuous (bench/serve.py: 1.7-2.1x grouped's "
        "images/s at 8-16 clients) unless the model's family runs only grouped batching (every family but SD "
        "1.x/2.x); grouped = one "
        "@serve.batch queue per step count; continuous = one active set, a request joins at the next UNet call. "
        "Serve only: the batch job's mode is images.batching.",
    )
    steps_max_batch_size: int = Field(32, ge=1, description="Requests whose prompts StepSaver scores in one forward.")
    steps_batch_wait_timeout_s: float = Field(0.002, ge=0, description="How long a StepSaver batch waits to fill up.")
    direct_ingress: bool = Field(
        False, description="The ingress replica itself listens on serve.port (Ray Serve's experimental direct ingress: "
        "no HTTP proxy hop; a /v1/steps request took ~1/4 of the CPU in bench/serve.py). Needs "
        "RAY_SERVE_ENABLE_DIRECT_INGRESS=1 on the cluster before Ray starts (`dynagen serve` sets it for its embedded "
        "Ray); Serve's proxy, still started on the head node, takes serve.port + 1. One ingress replica per node, a load "
        "balancer in front of several nodes.",
    )
    ingress_min_replicas: int = Field(1, ge=0, description="Ingress (StepSaver + router) replicas: minimum.")
    ingress_max_replicas: int = Field(2, ge=1, description="Ingress replicas: maximum (autoscaling).")
    ingress_target_ongoing_requests: float = Field(16, gt=0, description="Autoscaling target of in-flight requests per ingress replica.")
    ingress_max_ongoing_requests: int = Field(64, ge=1, description="Requests one ingress replica accepts at once.")
    ingress_num_cpus: float = Field(1.0, gt=0, description="CPUs per ingress replica (also sets its torch threads).")
    images_min_replicas: int = Field(1, ge=0, description="Image-generation replicas: minimum.")
    images_max_replicas: int = Field(1, ge=1, description="Image-generation replicas: maximum (autoscaling).")
    images_target_ongoing_requests: float = Field(8, gt=0, description="Autoscaling target of in-flight images per replica.")
    images_max_ongoing_requests: int = Field(32, ge=1, description="Images one generation replica accepts at once (>= max_batch_size).")
    images_num_cpus: float = Field(1.0, gt=0, description="CPUs per image replica (also sets its torch threads).")
    images_num_gpus: float = Field(0.0, ge=0, description="GPUs per image replica (0 = CPU).")

    @field_validator("api_key")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        # Replicas compare SHA-256 digests (the key itself never travels): a guessable key would be the weak link.
        if v is not None and len(v.get_secret_value()) < MIN_API_KEY_CHARS:
            raise ValueError(f"api_key must be at least {MIN_API_KEY_CHARS} characters (e.g. `openssl rand -hex 32`)")
        return v

    def is_loopback(self) -> bool:
        """Whether ``host`` only accepts connections from this machine."""
        import ipaddress

        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    def auth_required(self) -> bool:
        """Bearer token on every route but /healthz: always off loopback, on loopback when asked."""
        return not self.is_loopback() or self.api_key_on_loopback


class Settings(_Section):
    models_dir: str | None = Field(
        None, description="Folder of the embedded models (tiny-sd, stepsaver, early-stop, router, llm-small, "
        "llm-large); unset = the checkout's models/, or the installed package's copy. Model settings left unset "
        "point inside it.",
    )
    storage: StorageSettings = Field(default_factory=StorageSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)

    def serve_image_batching(self, model_runs_continuous: bool = True) -> str:
        """The image replicas' batching mode: ``serve.batching`` with ``auto`` resolved (see its description).
        ``model_runs_continuous``: whether the model's family supports continuous batching (SD 1.x/2.x only; the
        caller knows the model, the settings do not)."""
        if self.serve.batching != "auto":
            return self.serve.batching
        return "continuous" if model_runs_continuous else "grouped"

    @model_validator(mode="after")
    def _resolve_models_dir(self) -> "Settings":
        # Resolved here, when settings are built. The resolved values are written past pydantic's "fields set"
        # bookkeeping on purpose: they stay defaults, so `dynagen submit` (which sends only what was set) lets the
        # cluster resolve them against its own models dir.
        if self.models_dir is None:
            self.__dict__["models_dir"] = str(default_models_dir()[0])
            return self
        for section, key, name in EMBEDDED_MODELS:
            sec = getattr(self, section)
            if key not in sec.model_fields_set:
                sec.__dict__[key] = str(Path(self.models_dir) / name)
        return self


SECRET_KEYS = {"storage.access_key_id", "storage.secret_access_key", "serve.api_key"}


def secret_exclude() -> dict[str, set[str]]:
    """``SECRET_KEYS`` as pydantic's ``exclude=`` argument: settings leaving the process (run records, replicas)
    without their secrets."""
    out: dict[str, set[str]] = {}
    for key in SECRET_KEYS:
        section, name = key.split(".")
        out.setdefault(section, set()).add(name)
    return out

# Storage settings left unset take the standard AWS env vars, in this order: the one rule S3 clients, `config show`
# and `dynagen submit` (which forwards them to the job) share.
STORAGE_ENV = {
    "storage.endpoint_url": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "storage.region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "storage.access_key_id": ("AWS_ACCESS_KEY_ID",),
    "storage.secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
}
DEFAULT_REGION = "us-east-1"


def storage_from_env(key: str, env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """(value, env var name) of the first AWS env var set for the storage setting ``key``, or None."""
    env = os.environ if env is None else env
    for name in STORAGE_ENV.get(key, ()):
        if env.get(name):
            return env[name], name
    return None


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise SettingsError(f"setting '{dotted}': '{p}' is not a section")
    tree[leaf] = value


def _known_keys() -> set[str]:
    return set(_flatten(Settings().model_dump()))


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[Settings, dict[str, str]]:
    """Build Settings from file + env + flags (``overrides`` uses dotted keys, None values ignored).

    Returns (settings, sources) where sources maps each dotted key to 'default', 'file', 'env' or 'flag'.
    Raises SettingsError with a one-line message naming the bad key or file.
    """
    env = os.environ if env is None else env
    known = _known_keys()
    tree: dict[str, Any] = {}
    sources = {k: "default" for k in known}

    if config_file is not None:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise SettingsError(f"config file not found: {path}") from None
        except yaml.YAMLError as e:
            raise SettingsError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise SettingsError(f"config file {path} must be a mapping of sections, got {type(data).__name__}")
        for key, value in _flatten(data).items():
            if key not in known:
                raise SettingsError(f"config file {path}: unknown setting '{key}'")
            _set(tree, key, value)
            sources[key] = "file"

    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX) :].lower().replace("__", ".")
        if key not in known:
            raise SettingsError(f"env var {name}: unknown setting '{key}'")
        # YAML scalars so that "16", "true" and "null" mean what they look like.
        _set(tree, key, yaml.safe_load(raw) if raw != "" else None)
        sources[key] = "env"

    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in known:
            raise SettingsError(f"unknown setting '{key}'")
        _set(tree, key, value)
        sources[key] = "flag"

    try:
        settings = Settings.model_validate(tree)
    except ValidationError as e:
        raise SettingsError(_error_line(e, sources)) from None
    return settings, sources


def _error_line(e: ValidationError, sources: Mapping[str, str] | None = None) -> str:
    """One line for the first invalid setting: its dotted key (pydantic's union-member tags such as
    ``literal['auto']`` cut off), where the value came from, and every way it could have been valid."""
    def key(loc) -> str:
        parts, model = [], Settings
        for p in loc:
            fields = getattr(model, "model_fields", {})
            if p not in fields:
                break
            parts.append(str(p))
            model = fields[p].annotation
        return ".".join(parts) or ".".join(map(str, loc))

    errs = e.errors()
    where = key(errs[0]["loc"])
    msgs = list(dict.fromkeys(err["msg"] for err in errs if key(err["loc"]) == where))
    field = Settings.model_fields.get(where)
    if not errs[0]["loc"] or (field is not None and isinstance(field.annotation, type)
                              and issubclass(field.annotation, BaseModel)):
        # A rule across settings (a section's or the root's validator): its message names the keys; a source
        # for the whole section would be wrong.
        return "settings: " + " or ".join(m.removeprefix("Value error, ") for m in msgs)
    source = f" ({sources.get(where, 'default')})" if sources is not None else ""
    return f"setting '{where}'{source}: {' or '.join(msgs)}"


def settings_from_json(payload: str) -> Settings:
    """Re-validate settings a job received from the CLI (secrets travel via env, not in the payload)."""
    try:
        return Settings.model_validate_json(payload)
    except ValidationError as e:
        raise SettingsError(_error_line(e)) from None


def describe(settings: Settings, sources: Mapping[str, str],
             env: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(key, value, source) rows with secrets masked, for ``dynagen config show``: the values a run uses, so an
    unset storage setting shows the AWS env var it falls back to (source ``env AWS_…``)."""
    rows = []
    for key, value in sorted(_flatten(settings.model_dump()).items()):
        source = sources.get(key, "default")
        if value is None and (found := storage_from_env(key, env)) is not None:
            value, source = found[0], f"env {found[1]}"
        elif key == "storage.region" and value is None:
            value = DEFAULT_REGION
        if key in SECRET_KEYS and value is not None:
            value = "********"
        if key == "models_dir" and source == "default":
            source = f"default ({default_models_dir()[1]})"  # which of the two defaults it resolved to
        rows.append((key, "" if value is None else str(value), source))
    return rows

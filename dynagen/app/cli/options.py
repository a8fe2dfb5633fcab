"""The job options, defined once: ``dynagen run images|llm`` and ``dynagen submit images|llm`` take the same flags.

A job command is decorated with :func:`job_options` and a tuple of :class:`Flag`\\ s. The decorator gives it
``--prompts``, ``--out``, ``--config``, ``--run-id``, ``--verbose`` and one option per flag, each flag naming the settings key it
sets, with that setting's description from the schema as its help; the command receives them as one
:class:`JobArgs` (``job.overrides`` is ready for ``load(job.config, job.overrides)``). The command's own parameters
(``run``'s Ray ``--address``; ``submit``'s Jobs API ``--address``, ``--wait``, …) are kept beside them.
"""

from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Optional

import typer

from dynagen.app.cli.common import BatchingName, DTypeName, SchedulerName, ShareModeName
from dynagen.core.settings import EMBEDDED_MODELS, Settings


@dataclass(frozen=True)
class Flag:
    """One job option that sets one setting. ``type`` is the CLI type; ``convert`` maps a given value to the
    setting's (None means "not given": the file/env/default value stays)."""

    key: str  # dotted settings key, e.g. "images.batch_size"; the option is --batch-size
    type: Any = Optional[str]
    decls: tuple[str, ...] = ()  # explicit declarations, e.g. ("--early-stop/--no-early-stop",)
    default: Any = None
    convert: Callable[[Any], Any] = lambda v: v
    callback: Callable[[Any], Any] | None = None
    help: str | None = None  # None = the settings field's description

    @property
    def name(self) -> str:
        return self.key.rsplit(".", 1)[-1]

    def parameter(self) -> inspect.Parameter:
        section, name = self.key.split(".")
        spec = Settings.model_fields[section].annotation.model_fields[name]
        help_ = self.help or spec.description
        option = typer.Option(*self.decls, help=f"{help_} (setting: {self.key}{default_text(self.key, spec)})",
                              callback=self.callback)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default,
                                 annotation=Annotated[self.type, option])


def default_text(key: str, spec) -> str:
    """", default X" for a settings field with a default worth showing (an unset default is the description's job:
    it says what unset means; an embedded model is named, not its folder on this machine)."""
    embedded = {f"{section}.{name}": folder for section, name, folder in EMBEDDED_MODELS}
    if key in embedded:
        return f", default the embedded {embedded[key]}"
    value = spec.get_default(call_default_factory=True)
    if value is None or value == "" or value == []:
        return ""
    if isinstance(value, bool):
        return f", default {'on' if value else 'off'}"
    return f", default {getattr(value, 'value', value)}"


def _share(value: Optional[float]) -> Optional[float]:
    # Checked here too so the message names the flag; the settings schema checks it again.
    if value is not None and not 0.0 <= value <= 1.0:
        raise typer.BadParameter(f"must be in [0, 1], got {value}")
    return value


IMAGE_FLAGS: tuple[Flag, ...] = (
    Flag("images.steps"),
    Flag("images.model"),
    Flag("images.scheduler", Optional[SchedulerName], convert=lambda v: v.value if v else None),
    Flag("images.limit", Optional[int]),
    Flag("images.batch_size", Optional[int]),
    Flag("images.skip_bad_shards", bool, ("--skip-bad-shards",), default=False, convert=lambda v: v or None),
    Flag("images.early_stop", Optional[bool], ("--early-stop/--no-early-stop",)),
    Flag("images.adaptive", Optional[bool], ("--adaptive/--no-adaptive",)),
    Flag("images.adaptive_tol", Optional[float]),
    Flag("images.batching", Optional[BatchingName], convert=lambda v: v.value if v else None),
    Flag("images.dtype", Optional[DTypeName], convert=lambda v: v.value if v else None),
    Flag("images.compile", Optional[bool], ("--compile/--no-compile",)),
    Flag("images.vae_slicing", Optional[bool], ("--vae-slicing/--no-vae-slicing",)),
    Flag("images.vae_tiling", Optional[bool], ("--vae-tiling/--no-vae-tiling",)),
)

LLM_FLAGS: tuple[Flag, ...] = (
    Flag("llm.large_share", Optional[float], callback=_share),
    Flag("llm.share_mode", Optional[ShareModeName], convert=lambda v: v.value if v else None),
    Flag("llm.small_model"),
    Flag("llm.large_model"),
    Flag("llm.max_new_tokens", Optional[int]),
    Flag("llm.router"),
    Flag("llm.limit", Optional[int]),
)


@dataclass
class JobArgs:
    """What a job command got: where to read and write, and the settings flags as dotted keys."""

    prompts: str
    out: str
    config: str | None = None
    run_id: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    verbose: bool = False  # Ray's own logs and operator progress on the job's output, not only in Ray's log files


_K = inspect.Parameter.KEYWORD_ONLY
_BEFORE = [  # the job's input and output come first in --help
    inspect.Parameter("prompts", _K, annotation=Annotated[str, typer.Option(
        "--prompts", "-p", help="Prompt shards: a file, directory, glob or s3:// prefix (.parquet, .jsonl, .csv; "
        "column 'prompt', optional 'id'; images also take seed, negative_prompt, steps).")]),
    inspect.Parameter("out", _K, annotation=Annotated[str, typer.Option(
        "--out", "-o", help="Destination: a local folder or s3://bucket/prefix.")]),
]
_AFTER = [
    inspect.Parameter("config", _K, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--config", "-c", help="YAML settings file.")]),
    inspect.Parameter("run_id", _K, default=None, annotation=Annotated[Optional[str], typer.Option(
        help="Run id (default: UTC timestamp + random suffix).")]),
    inspect.Parameter("verbose", _K, default=False, annotation=Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show Ray's own logs and operator progress in the job's output (default: Ray's log "
        "files; warnings and errors always show).")]),
]


def job_options(flags: tuple[Flag, ...]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command ``fn(job: JobArgs, **own)``: typer sees the shared job options plus ``fn``'s own."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(fn, include_extras=True)  # real objects: typer reads __signature__ as is
        own = [p.replace(kind=_K, annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(fn).parameters.values() if p.name != "job"]
        required = [p for p in own if p.default is inspect.Parameter.empty]
        optional = [p for p in own if p.default is not inspect.Parameter.empty]
        params = [*_BEFORE, *required, *(f.parameter() for f in flags), *_AFTER, *optional]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            overrides = {f.key: f.convert(kwargs.pop(f.name)) for f in flags}
            job = JobArgs(kwargs.pop("prompts"), kwargs.pop("out"), kwargs.pop("config"), kwargs.pop("run_id"),
                          overrides, kwargs.pop("verbose"))
            return fn(job, **kwargs)

        # typer must see the generated signature and its resolved annotations, not fn's.
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__
        return command

    return decorate

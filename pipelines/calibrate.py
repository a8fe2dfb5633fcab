"""StepSaver calibration: how many denoising steps does each (prompt, seed) need to converge?

For every (prompt, seed) the image is generated at each count of a step grid and once at a high reference count,
same seed, so only the step count differs. Quality per count = SSIM to the reference (plus PSNR and a
low-resolution SSIM as cross-checks); ``min_steps`` = the smallest grid count whose SSIM ≥ threshold (falling back
to the reference count). The rows train the StepSaver predictor (``actors/stepsaver.py``).

The sweep is batched across prompts: an actor takes a window of rows and runs the whole window at one step count
per UNet batch, count after count. On Ray Data it scales out like any other stage:
``from_items`` → ``map_batches(CalibrationActor, ActorPoolStrategy)`` → Parquet.

Threshold default 0.90 (SSIM): on 64×64 images SSIM is sensitive to pixel-level noise and texture phase, and in
the StepSaver paper's sense "converged" means no visible change, not bit-identical; the curves are stored whole
so training can re-label at another threshold without regenerating. With ``early_stop`` a row stops at its first
count ≥ threshold (the rest of its curve is NaN): ~2× cheaper, and re-labelling still works for lower thresholds.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dynagen.core.errors import runtime_error

DEFAULT_GRID = (4, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100)
DEFAULT_REFERENCE_STEPS = 200
DEFAULT_THRESHOLD = 0.90
DEFAULT_SEEDS = (0, 1, 2)
PSNR_CAP = 100.0  # identical images have infinite PSNR; a finite cap keeps Parquet/JSON plain floats
LIGHT_CPU = 0.25  # the from_items read is trivial: keep it from competing with the sweep actors for CPUs


class CalibrationError(ValueError):
    """Bad calibration arguments (grid, threshold, prompts); one line for the user."""


# 1. Records and pure helpers ---------------------------------------------------------------------------------


@dataclass
class CalibrationRecord:
    """One (prompt, seed): the quality curve over the step grid and the label."""

    prompt: str
    seed: int
    scheduler: str
    model: str
    guidance_scale: float
    reference_steps: int
    threshold: float
    steps_swept: list[int] = field(default_factory=list)
    quality_per_step: list[float] = field(default_factory=list)  # SSIM to the reference, full resolution
    psnr_per_step: list[float] = field(default_factory=list)  # dB, capped at PSNR_CAP
    ssim_lowres_per_step: list[float] = field(default_factory=list)  # SSIM after 2×2 average pooling
    min_steps: int = 0
    status: str = "ok"
    error: str = ""


def calibration_schema():
    import pyarrow as pa

    f64, i64, s = pa.float64(), pa.int64(), pa.string()
    return pa.schema([
        ("prompt", s), ("seed", i64), ("scheduler", s), ("model", s), ("guidance_scale", f64),
        ("reference_steps", i64), ("threshold", f64), ("steps_swept", pa.list_(i64)),
        ("quality_per_step", pa.list_(f64)), ("psnr_per_step", pa.list_(f64)),
        ("ssim_lowres_per_step", pa.list_(f64)), ("min_steps", i64), ("status", s), ("error", s),
    ])


def records_to_table(records: Sequence[CalibrationRecord]):
    import pyarrow as pa

    schema = calibration_schema()
    cols = {name: [getattr(r, name) for r in records] for name in schema.names}
    return pa.table(cols, schema=schema)


def prompt_seed(prompt: str, k: int) -> int:
    """The k-th image seed of a prompt: its own seeds, so a seed that happens to be slow for every prompt (the
    initial noise dominates convergence on small models) is not shared by all prompts' labels."""
    import hashlib

    return (int.from_bytes(hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).digest()[:4], "big") + int(k)) % 2**32


def check_grid(grid: Sequence[int], reference_steps: int, threshold: float) -> list[int]:
    """The grid as sorted unique ints; raises CalibrationError on nonsense."""
    g = sorted({int(x) for x in grid})
    if not g or g[0] < 1:
        raise CalibrationError(f"step grid must hold positive integers, got {list(grid)}")
    if reference_steps < g[-1]:
        raise CalibrationError(f"reference steps ({reference_steps}) must be ≥ the largest grid count ({g[-1]})")
    if not 0.0 < threshold <= 1.0:
        raise CalibrationError(f"SSIM threshold must be in (0, 1], got {threshold}")
    return g


def _pool2(img: np.ndarray) -> np.ndarray:
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    x = img[:h, :w].astype(np.float64)
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) / 4.0


def image_quality(image: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    """(SSIM, PSNR dB, low-res SSIM) of a uint8 (H, W, 3) image against the reference."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ssim = structural_similarity(reference, image, channel_axis=2, data_range=255)
    if np.array_equal(image, reference):
        psnr = PSNR_CAP
    else:
        psnr = min(PSNR_CAP, float(peak_signal_noise_ratio(reference, image, data_range=255)))
    # 2×2 pooling removes pixel-level noise/texture phase: a cross-check that the drop is in the layout/colour.
    a, b = _pool2(reference), _pool2(image)
    win = min(7, (min(a.shape[:2]) // 2) * 2 - 1)
    ssim_lo = structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win)
    return float(ssim), float(psnr), float(ssim_lo)


def min_steps_for(grid: Sequence[int], quality: Sequence[float], threshold: float, reference_steps: int) -> int:
    """Smallest grid count whose quality ≥ threshold; the reference count if none reaches it."""
    for g, q in zip(grid, quality):
        if q is not None and not math.isnan(q) and q >= threshold:
            return int(g)
    return int(reference_steps)


def variance_split(prompts: Sequence[str], values: Sequence[float]) -> dict[str, float]:
    """How much of the spread of ``values`` (e.g. min_steps) is explained by the prompt vs the seed.

    One-way decomposition: total = between-prompt (spread of prompt means, weighted by rows) + within-prompt
    (spread over seeds around each prompt's mean). ``prompt_share`` = between / total: the part a prompt-only
    predictor can at best capture; ``seed_share`` = within / total; ``prompt_share_unbiased`` corrects the one-way
    split for the few seeds per prompt (see below). Also the per-prompt mean seed std.
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) == 0:
        return {"rows": 0, "prompts": 0, "total_var": 0.0, "between_prompt_var": 0.0, "within_prompt_var": 0.0,
                "prompt_share": float("nan"), "seed_share": float("nan"), "mean_within_prompt_std": 0.0}
    groups: dict[str, list[float]] = {}
    for p, x in zip(prompts, v):
        groups.setdefault(p, []).append(float(x))
    mean = v.mean()
    total = float(np.mean((v - mean) ** 2))
    between = float(sum(len(g) * (np.mean(g) - mean) ** 2 for g in groups.values()) / len(v))
    within = float(sum(np.sum((np.asarray(g) - np.mean(g)) ** 2) for g in groups.values()) / len(v))
    share = between / total if total > 0 else float("nan")
    # With k seeds per prompt the one-way split counts 1/k of the seed noise as "between prompts" (k = 2: half of
    # it). The ANOVA estimate removes that bias: σ²_seed = within · k/(k-1), σ²_prompt = between − σ²_seed/k.
    k = len(v) / len(groups)
    if k > 1 and total > 0:
        seed_var = within * k / (k - 1)
        prompt_var = max(0.0, between - seed_var / k)
        unbiased = prompt_var / (prompt_var + seed_var) if prompt_var + seed_var > 0 else float("nan")
    else:
        unbiased = float("nan")
    return {
        "rows": int(len(v)),
        "prompts": len(groups),
        "total_var": total,
        "between_prompt_var": between,
        "within_prompt_var": within,
        "prompt_share": share,
        "seed_share": 1.0 - share if total > 0 else float("nan"),
        "prompt_share_unbiased": unbiased,
        "mean_within_prompt_std": float(np.mean([np.std(g) for g in groups.values()])),
    }


# 2. The core (no Ray) ----------------------------------------------------------------------------------------


class CalibrationCore:
    """Holds one diffusion pipeline; sweeps windows of (prompt, seed) rows over the step grid."""

    def __init__(
        self,
        model: str,
        scheduler: str = "auto",
        grid: Sequence[int] = DEFAULT_GRID,
        reference_steps: int = DEFAULT_REFERENCE_STEPS,
        threshold: float = DEFAULT_THRESHOLD,
        guidance_scale: float | None = None,
        batch_size: int = 32,
        num_threads: int | None = None,
        reuse_reference: bool = True,
        early_stop: bool = False,
    ):
        from actors.diffusion import DiffusionCore

        self.grid = check_grid(grid, reference_steps, threshold)
        self.reference_steps = int(reference_steps)
        self.threshold = float(threshold)
        # If the reference count is on the grid its image is the reference (same seed ⇒ same image); tests turn
        # this off to check that determinism instead of assuming it.
        self.reuse_reference = reuse_reference
        # Stop sweeping a row at its first count ≥ threshold: the label is known, higher counts only cost evals.
        # Skipped counts are NaN, so the curves can still be re-labelled at any *lower* threshold.
        self.early_stop = early_stop
        self.diffusion = DiffusionCore(
            model, scheduler, guidance_scale=guidance_scale, batch_size=batch_size, num_threads=num_threads
        )

    @property
    def unet_evals(self) -> int:
        return self.diffusion.counter.evals

    def _generate(self, prompts: list[str], seeds: list[int], steps: int) -> np.ndarray:
        bs = self.diffusion.batch_size
        parts = [self.diffusion.generate(prompts[s : s + bs], seeds[s : s + bs], steps) for s in range(0, len(prompts), bs)]
        return np.concatenate(parts, axis=0)

    def sweep(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[CalibrationRecord]:
        """One record per (prompt, seed) row; a failure fails the window's rows (recorded, not raised)."""
        prompts, seeds = [str(p) for p in prompts], [int(s) for s in seeds]
        d = self.diffusion
        base = dict(scheduler=d.scheduler, model=d.model, guidance_scale=float(d.guidance_scale),
                    reference_steps=self.reference_steps, threshold=self.threshold)
        records = [CalibrationRecord(prompt=p, seed=s, **base) for p, s in zip(prompts, seeds)]
        if not records:
            return records
        try:
            # 1. Reference images (high step count, same seeds)
            ref = self._generate(prompts, seeds, self.reference_steps)
            # 2. Each grid count once for the whole window (one UNet batch per count, not per prompt)
            curves = np.full((len(records), len(self.grid), 3), np.nan)
            active = list(range(len(records)))
            for k, steps in enumerate(self.grid):
                if not active:
                    break
                if steps == self.reference_steps and self.reuse_reference:
                    imgs = ref[active]
                else:
                    imgs = self._generate([prompts[i] for i in active], [seeds[i] for i in active], steps)
                for j, i in enumerate(active):
                    curves[i, k] = image_quality(imgs[j], ref[i])
                if self.early_stop:
                    active = [i for i in active if curves[i, k, 0] < self.threshold]
        except Exception as e:  # the other windows still run; the rows say why this one failed
            msg = runtime_error(e, "calibration")
            for r in records:
                r.status, r.error = "failed", msg
            return records
        # 3. Labels
        for i, r in enumerate(records):
            r.steps_swept = list(self.grid)
            r.quality_per_step = curves[i, :, 0].round(6).tolist()
            r.psnr_per_step = curves[i, :, 1].round(4).tolist()
            r.ssim_lowres_per_step = curves[i, :, 2].round(6).tolist()
            r.min_steps = min_steps_for(self.grid, r.quality_per_step, self.threshold, self.reference_steps)
        return records


# 3. The Ray Data wrapper -------------------------------------------------------------------------------------


class CalibrationActor:
    """Callable class for ``map_batches``: a batch of (prompt, seed) rows in, calibration rows out (Arrow)."""

    def __init__(self, **core_kwargs):
        self.core = CalibrationCore(**core_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]):
        return records_to_table(self.core.sweep(batch["prompt"].tolist(), batch["seed"].tolist()))


# 4. Wiring ---------------------------------------------------------------------------------------------------


@dataclass
class CalibrationSummary:
    out: str
    rows: int
    ok: int
    failed: int
    prompts: int
    seeds: list[int]
    grid: list[int]
    reference_steps: int
    threshold: float
    scheduler: str
    model: str
    wall_s: float
    seconds_per_row: float
    min_steps_histogram: dict[str, int]
    variance_split: dict[str, float]
    mean_quality_per_step: dict[str, float]  # over the rows swept at each count (early stop: the slow ones)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build(
    prompts: Sequence[str],
    *,
    model: str,
    scheduler: str = "auto",
    seeds: Sequence[int] = DEFAULT_SEEDS,
    grid: Sequence[int] = DEFAULT_GRID,
    reference_steps: int = DEFAULT_REFERENCE_STEPS,
    threshold: float = DEFAULT_THRESHOLD,
    guidance_scale: float | None = None,
    rows_per_window: int = 48,
    batch_size: int = 48,
    actors: int = 1,
    cpus_per_actor: float = 1.0,
    num_threads: int | None = None,
    early_stop: bool = False,
    distinct_seeds: bool = False,
):
    """The calibration Dataset (lazy): one output row per (prompt, seed).

    ``seeds`` are used as given for every prompt, or with ``distinct_seeds`` as offsets into each prompt's own
    seeds (:func:`prompt_seed`).
    """
    import ray

    # 1. Check inputs before any actor starts (the model too: its family must take the scheduler)
    grid = check_grid(grid, reference_steps, threshold)
    from actors.diffusion import ModelLoadError, check_model

    try:
        check_model(model, scheduler)
    except ModelLoadError as e:
        raise CalibrationError(str(e)) from None
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise CalibrationError(f"prompt {bad[0]} is empty or not a string ({len(bad)} bad prompts)")
    if not prompts or not seeds:
        raise CalibrationError("need at least one prompt and one seed")

    # 2. Rows: every prompt with every seed. Enough blocks that every actor of the pool gets windows.
    items = [{"prompt": p, "seed": prompt_seed(p, s) if distinct_seeds else int(s)} for p in prompts for s in seeds]
    blocks = max(1, min(len(items), math.ceil(len(items) / rows_per_window)))
    ds = ray.data.from_items(items, override_num_blocks=blocks)

    # 3. Sweep: each actor call runs a window of rows through the grid, one UNet batch per step count
    return ds.map_batches(
        CalibrationActor,
        fn_constructor_kwargs=dict(
            model=str(model), scheduler=scheduler, grid=grid, reference_steps=reference_steps, threshold=threshold,
            guidance_scale=guidance_scale, batch_size=batch_size,
            num_threads=num_threads or max(1, math.ceil(cpus_per_actor)), early_stop=early_stop,
        ),
        batch_size=rows_per_window,
        batch_format="numpy",
        # A fixed pool: the job's size is known up front, and an autoscaling pool starting at 1 was seen to stay at 1.
        compute=ray.data.ActorPoolStrategy(min_size=max(1, actors), max_size=max(1, actors)),
        num_cpus=cpus_per_actor,
    )


def read_calibration(paths: str | Path | Sequence[str | Path]):
    """Calibration rows (pyarrow Table) from one or more Parquet files or Ray output folders."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(paths, (str, Path)):
        paths = [paths]
    tables = []
    for p in paths:
        if not Path(p).exists():
            raise CalibrationError(f"calibration data not found: {p}")
        tables.append(pq.read_table(str(p), schema=calibration_schema()))
    return pa.concat_tables(tables)


def summarize(table, out: str, wall_s: float, seeds: Sequence[int]) -> CalibrationSummary:
    rows = table.to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    first = rows[0]
    grid = list(ok[0]["steps_swept"]) if ok else []
    hist: dict[str, int] = {}
    for r in ok:
        hist[str(r["min_steps"])] = hist.get(str(r["min_steps"]), 0) + 1
    curves = np.array([r["quality_per_step"] for r in ok]) if ok else np.zeros((0, len(grid)))
    return CalibrationSummary(
        out=str(out), rows=len(rows), ok=len(ok), failed=len(rows) - len(ok), prompts=len({r["prompt"] for r in rows}),
        seeds=[int(s) for s in seeds], grid=grid, reference_steps=int(first["reference_steps"]),
        threshold=float(first["threshold"]), scheduler=first["scheduler"], model=first["model"],
        wall_s=round(wall_s, 2), seconds_per_row=round(wall_s / max(1, len(rows)), 3),
        min_steps_histogram=dict(sorted(hist.items(), key=lambda kv: int(kv[0]))),
        variance_split=variance_split([r["prompt"] for r in ok], [r["min_steps"] for r in ok]),
        mean_quality_per_step={str(g): round(float(q), 4) for g, q in zip(grid, np.nanmean(curves, 0))} if ok else {},
    )


def run(prompts: Sequence[str], out: str | Path, **build_kwargs) -> CalibrationSummary:
    """Calibrate ``prompts`` and write the rows to ``out``; returns a summary (histogram, variance split).

    ``out`` ending in ``.parquet`` → one file (rows are gathered on the driver: calibration tables are small);
    otherwise a folder written by Ray Data's Parquet sink (one file per block, for large sweeps on a cluster).
    """
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    # 1. Build the lazy Dataset (checks inputs)
    ds = build(prompts, **build_kwargs)
    out = Path(out)
    # 2. Execute and write
    if out.suffix == ".parquet":
        import pyarrow as pa

        out.parent.mkdir(parents=True, exist_ok=True)
        schema = calibration_schema()
        table = pa.concat_tables(
            [b.select(schema.names).cast(schema) for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
        )
        table = table.sort_by([("prompt", "ascending"), ("seed", "ascending")])
        pq.write_table(table, str(out))
    else:
        ds.write_parquet(str(out))
        table = read_calibration(out)
    # 3. Summary
    return summarize(table, str(out), time.perf_counter() - t0, build_kwargs.get("seeds", DEFAULT_SEEDS))

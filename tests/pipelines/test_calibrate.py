"""Calibration: pure helpers, the core on a tiny random pipeline (each scheduler), the Ray Data pipeline."""

import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.calibrate import (
    CalibrationCore,
    CalibrationError,
    calibration_schema,
    check_grid,
    image_quality,
    min_steps_for,
    prompt_seed,
    run,
    variance_split,
)

GRID = (2, 3, 5)
REF = 5


# 1. Pure helpers -------------------------------------------------------------------------------------------


def test_image_quality_identical_and_different():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert image_quality(a, a) == (1.0, 100.0, 1.0)
    b = np.clip(a.astype(int) + rng.integers(-40, 40, a.shape), 0, 255).astype(np.uint8)
    ssim, psnr, ssim_lo = image_quality(b, a)
    assert 0 < ssim < 1 and 0 < psnr < 100 and ssim < ssim_lo <= 1  # pooling forgives pixel noise


def test_min_steps_for_and_threshold_monotone():
    grid, q = [4, 8, 16, 32], [0.5, 0.92, 0.89, 0.97]
    assert min_steps_for(grid, q, 0.90, 200) == 8  # the first count that reaches the threshold
    assert min_steps_for(grid, q, 0.95, 200) == 32
    assert min_steps_for(grid, q, 0.99, 200) == 200  # none reaches it: the reference count
    assert min_steps_for(grid, [float("nan"), 0.95, 1, 1], 0.9, 200) == 8
    labels = [min_steps_for(grid, q, t, 200) for t in np.linspace(0.3, 1.0, 50)]
    assert labels == sorted(labels)  # raising the quality bar never lowers the label


def test_check_grid_errors():
    assert check_grid([10, 4, 4, 8], 10, 0.9) == [4, 8, 10]
    with pytest.raises(CalibrationError, match="reference steps"):
        check_grid([4, 100], 50, 0.9)
    with pytest.raises(CalibrationError, match="positive"):
        check_grid([0, 4], 50, 0.9)
    with pytest.raises(CalibrationError, match="threshold"):
        check_grid([4], 50, 1.5)


def test_prompt_seed_stable_and_distinct():
    assert prompt_seed("a red circle", 0) == prompt_seed("a red circle", 0)
    assert prompt_seed("a red circle", 1) != prompt_seed("a red circle", 0)
    assert prompt_seed("a red circle", 0) != prompt_seed("a blue circle", 0)
    assert 0 <= prompt_seed("ünïcode ✓", 7) < 2**32


def test_variance_split():
    # prompt means differ, seeds do not: all variance is between prompts
    s = variance_split(["a", "a", "b", "b"], [10, 10, 20, 20])
    assert s["prompt_share"] == pytest.approx(1.0) and s["within_prompt_var"] == 0
    # same prompt means, seeds differ: all within
    s = variance_split(["a", "a", "b", "b"], [10, 20, 10, 20])
    assert s["prompt_share"] == pytest.approx(0.0) and s["seed_share"] == pytest.approx(1.0)
    s = variance_split(["a", "a", "b", "b"], [10, 12, 20, 26])
    assert s["between_prompt_var"] + s["within_prompt_var"] == pytest.approx(s["total_var"])
    assert 0.5 < s["prompt_share"] < 1
    assert math.isnan(variance_split(["a", "b"], [5, 5])["prompt_share"])  # no spread at all


def test_variance_split_unbiased_share_removes_the_few_seeds_bias():
    # pure seed noise, 2 seeds per prompt: the one-way split calls about half of it "prompt", the ANOVA estimate ~0
    rng = np.random.default_rng(0)
    prompts = [f"p{i}" for i in range(2000) for _ in range(2)]
    noise = variance_split(prompts, rng.normal(20, 5, len(prompts)))
    assert 0.4 < noise["prompt_share"] < 0.6 and noise["prompt_share_unbiased"] < 0.05
    # prompt effect (sd 5) plus equal seed noise (sd 5): the true share is 0.5
    means = rng.normal(20, 5, 2000)
    mixed = variance_split(prompts, np.repeat(means, 2) + rng.normal(0, 5, len(prompts)))
    assert mixed["prompt_share_unbiased"] == pytest.approx(0.5, abs=0.05) and mixed["prompt_share"] > 0.6


# 2. The core, each scheduler ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
def test_core_sweep_each_scheduler(tiny_model, scheduler):
    core = CalibrationCore(tiny_model, scheduler, grid=GRID, reference_steps=REF, threshold=0.9, batch_size=4,
                           num_threads=1, reuse_reference=False)
    recs = core.sweep(["a red circle on a white background", "two blue squares"], [0, 1])
    assert [r.status for r in recs] == ["ok", "ok"]
    for r in recs:
        assert r.scheduler == scheduler and r.steps_swept == list(GRID)
        # the count equal to the reference, generated again in its own batch: identical image
        assert r.quality_per_step[-1] == 1.0 and r.psnr_per_step[-1] == 100.0
        assert r.min_steps in GRID
        below = [q for g, q in zip(GRID, r.quality_per_step) if g < r.min_steps]
        assert all(q < r.threshold for q in below)
        assert r.quality_per_step[GRID.index(r.min_steps)] >= r.threshold
    # UNet evals: (reference + every grid count) × rows × 2 (classifier-free guidance)
    assert core.unet_evals == (REF + sum(GRID)) * 2 * 2


def test_core_early_stop_skips_counts_after_convergence(tiny_model):
    core = CalibrationCore(tiny_model, "ddim", grid=GRID, reference_steps=REF, threshold=0.01, batch_size=4,
                           num_threads=1, early_stop=True)
    (r,) = core.sweep(["a red circle"], [3])
    assert r.min_steps == GRID[0] and not math.isnan(r.quality_per_step[0])
    assert all(math.isnan(q) for q in r.quality_per_step[1:])  # never generated
    assert core.unet_evals == (REF + GRID[0]) * 2


def test_core_failure_is_recorded_not_raised(tiny_model, monkeypatch):
    core = CalibrationCore(tiny_model, "ddim", grid=GRID, reference_steps=REF, batch_size=4, num_threads=1)

    def boom(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(core.diffusion, "generate", boom)
    recs = core.sweep(["x", "y"], [0, 0])
    assert {r.status for r in recs} == {"failed"} and "out of memory" in recs[0].error


# 3. On Ray Data ----------------------------------------------------------------------------------------------


def test_run_on_ray_writes_parquet(ray_local, tiny_model, tmp_path):
    out = tmp_path / "cal.parquet"
    summary = run(
        ["a red circle on a white background", "three small green stars on a black background"], out,
        model=tiny_model, scheduler="euler", seeds=[0, 1], grid=GRID, reference_steps=REF, threshold=0.9,
        rows_per_window=2, batch_size=4, actors=1, cpus_per_actor=0.5, num_threads=1,
    )
    t = pq.read_table(out)
    assert t.schema.equals(calibration_schema())
    for col in ("prompt", "seed", "scheduler", "steps_swept", "quality_per_step", "psnr_per_step", "min_steps", "model"):
        assert col in t.column_names
    rows = t.to_pylist()
    assert len(rows) == 4 and summary.rows == 4 and summary.ok == 4 and summary.prompts == 2
    assert {(r["prompt"], r["seed"]) for r in rows} == {(p, s) for p in {r["prompt"] for r in rows} for s in (0, 1)}
    for r in rows:
        assert r["scheduler"] == "euler" and r["model"] == tiny_model and r["steps_swept"] == list(GRID)
        assert r["min_steps"] in GRID and r["quality_per_step"][-1] == 1.0
    assert sum(summary.min_steps_histogram.values()) == 4
    assert 0 <= summary.variance_split["total_var"]


def test_run_rejects_bad_prompts_before_starting(tiny_model, tmp_path):
    with pytest.raises(CalibrationError, match="prompt 1"):
        run(["ok", "  "], tmp_path / "x.parquet", model=tiny_model, grid=GRID, reference_steps=REF)

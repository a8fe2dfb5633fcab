"""Shared fixtures: a real local Ray, a real SeaweedFS S3 server, a tiny random diffusers model.

Layers (STYLE.md): pure units need none of these; pipeline tests use ``ray_local`` (one per session, since
starting Ray costs seconds); S3 tests add ``s3``; CLI tests use typer's CliRunner on top.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No hub at run time, Ray bound to loopback (see ../shared/NOTES.md).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (shared data lives beside the checkout)")
    return SHARED


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=str(tmp_path_factory.mktemp("ray")),
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A random-init pipeline with the embedded model's architecture, saved like real weights."""
    from dynagen.world.tinymodel import build_pipeline

    path = tmp_path_factory.mktemp("models") / "tiny-random"
    build_pipeline(seed=0).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def family_models(tmp_path_factory) -> dict[str, str]:
    """Every diffusers family dynagen runs (SD, SDXL, SD3, FLUX, PixArt-Σ, Sana) as a tiny random pipeline built from
    configs and saved like real weights: {family name: folder}. About 5 s for all six, no download."""
    from dynagen.world.tiny_families import FAMILY_NAMES, save_family

    root = tmp_path_factory.mktemp("families")
    return {name: save_family(name, root / name) for name in FAMILY_NAMES}


@pytest.fixture(scope="session")
def train_toy_stepsaver(tmp_path_factory):
    """Trains a small StepSaver on a toy labelling rule: returns ``train(prompts, grid) -> (predictor, metrics, path)``.

    Simple prompts converge fast, textured ("striped", "dotted") and multi-object ones slowly; of 3 seeds per prompt
    one needs a bucket more (the seed spread the real labels have)."""
    from actors.stepsaver import HeadConfig
    from pipelines.training.stepsaver import FitConfig, train_predictor

    def train(prompts: list[str], grid: list[int]):
        texts, labels = [], []
        for p in prompts:
            base = (1 if ("striped" in p or "dotted" in p) else 0) + (1 if (" and " in p or "three" in p) else 0)
            for seed in range(3):
                texts.append(p)
                labels.append(grid[min(len(grid) - 1, base + (seed == 2))])
        predictor, metrics = train_predictor(texts, labels, grid, folds=3, fit=FitConfig(epochs=150),
                                             head=HeadConfig(hidden=16), num_threads=1)
        return predictor, metrics, predictor.save(tmp_path_factory.mktemp("stepsaver") / "art")

    return train


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 (free ports) with one bucket, credentials in the AWS env vars."""
    from dynagen.app.devservers import SeaweedS3

    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    old = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    yield server
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()

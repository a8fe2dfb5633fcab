"""Training the embedded tiny-sd (pipelines/training/tiny_model.py): argument checks, and a seconds-long run that
saves a folder the model's own loader reads back."""

import json

import numpy as np
import pytest

from dynagen.world import tinymodel
from pipelines.training.tiny_model import train


def test_train_refuses_vae_init_from_with_a_skipped_vae_stage(tmp_path):
    with pytest.raises(ValueError, match="give only one"):
        train(tmp_path / "m", minutes=0.01, vae_init_from="a", vae_from="b")


def test_a_short_run_saves_a_loadable_pipeline(tmp_path):
    out = tmp_path / "m"
    summary = train(out, minutes=0.05, n_images=16, batch_size=8, log_every=10**6)
    assert summary["unet_steps"] > 0 and np.isfinite(summary["final_loss"])
    assert json.loads((out / "dynagen.json").read_text())["guidance_scale"] == tinymodel.DEFAULT_GUIDANCE_SCALE
    pipe = tinymodel.load_pipeline(out)
    (img,) = tinymodel.generate(pipe, ["a red circle"], steps=2, seed=0)
    assert img.shape == (tinymodel.IMAGE_SIZE, tinymodel.IMAGE_SIZE, 3)

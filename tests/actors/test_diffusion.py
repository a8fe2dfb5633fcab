import json
import shutil

import numpy as np
import pytest

from actors.diffusion import DiffusionCore, ModelLoadError, check_model_dir, plan_batches


def test_plan_batches_single_key_and_complete():
    keys = [8, 4, 8, 8, 4, 20, 8]
    batches = plan_batches(keys, batch_size=2)
    assert sorted(i for b in batches for i in b) == list(range(len(keys)))  # nothing dropped, partials flushed
    assert all(len({keys[i] for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert [len(b) for b in batches] == [2, 2, 2, 1]


@pytest.fixture(scope="module")
def core(tiny_model):
    return DiffusionCore(tiny_model, "ddim", guidance_scale=3.0, batch_size=3, num_threads=2)


def test_generate_deterministic_per_seed_regardless_of_batch(core):
    both = core.generate(["a red circle", "a blue square"], [1, 2], steps=3)
    alone = core.generate(["a blue square"], [2], steps=3)
    assert both.shape == (2, core.height, core.width, 3) and both.dtype == np.uint8
    # Batched float math (BLAS blocking depends on batch size) may move a rare pixel by one level of 255.
    assert np.abs(both[1].astype(int) - alone[0].astype(int)).max() <= 2


def test_run_groups_by_steps_counts_evals_and_passes_failures(core):
    n = 7
    rows = {
        "id": [f"r{i}" for i in range(n)], "prompt": ["a green triangle"] * n, "negative_prompt": [""] * n,
        "seed": list(range(n)), "steps": [2, 3, 2, 2, 3, 2, 4], "status": ["ok"] * 6 + ["failed"],
        "error": [""] * 6 + ["empty prompt"],
    }
    out = core.run(rows)
    ok = [i for i in range(n) if out["status"][i] == "ok"]
    assert len(ok) == 6 and out["image"][6] == b"" and out["error"][6] == "empty prompt"
    by_batch = {}
    for i in ok:
        by_batch.setdefault(out["batch_id"][i], set()).add(out["steps"][i])
        assert out["image"][i][:4] == b"\x89PNG"
        assert out["unet_evals"][i] == 2 * out["steps"][i]  # classifier-free guidance doubles the UNet batch
    assert all(len(s) == 1 for s in by_batch.values())
    # steps 2 ×4 → batches of 3 and 1; steps 3 ×2 → one batch of 2
    assert sorted(out["batch_size"][i] for i in ok) == [1, 2, 2, 3, 3, 3]


@pytest.mark.parametrize("scheduler, cls", [("euler", "EulerDiscreteScheduler"), ("dpm++", "DPMSolverMultistepScheduler")])
def test_other_schedulers(tiny_model, scheduler, cls):
    """The swap really happens: the pipeline holds the asked scheduler and its images differ from DDIM's."""
    c = DiffusionCore(tiny_model, scheduler, batch_size=2, num_threads=1)
    assert type(c.pipe.scheduler).__name__ == cls
    img = c.generate(["x"], [0], steps=3)
    ddim = DiffusionCore(tiny_model, "ddim", batch_size=2, num_threads=1).generate(["x"], [0], steps=3)
    assert img.shape == ddim.shape and np.abs(img.astype(int) - ddim.astype(int)).max() > 2


def test_bad_model_folders(tiny_model, tmp_path):
    with pytest.raises(ModelLoadError, match="model folder not found"):
        check_model_dir(tmp_path / "nope")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ModelLoadError, match="vae/ is missing|folder vae/ is missing"):
        check_model_dir(broken)
    odd = tmp_path / "odd"
    shutil.copytree(tiny_model, odd)
    index = json.loads((odd / "model_index.json").read_text())
    index["controlnet"] = ["diffusers", "ControlNetModel"]
    (odd / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="unknown component 'controlnet'"):
        check_model_dir(odd)
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model, pickled)
    for f in (pickled / "unet").glob("*.safetensors"):
        f.rename(f.with_name("diffusion_pytorch_model.bin"))
    with pytest.raises(ModelLoadError, match="safetensors required"):
        check_model_dir(pickled)
    with pytest.raises(ModelLoadError, match=r"SD 1.x/2.x models run with ddim, euler, dpm\+\+; scheduler 'heun'"):
        DiffusionCore(tiny_model, "heun")


def test_one_scheduler_list():
    """The settings' list is the one the CLI offers and the actor knows ('auto' = the family's own)."""
    from actors.families import AUTO, SCHEDULER_CLASSES
    from dynagen.app.cli.common import SchedulerName
    from dynagen.core.settings import SCHEDULER_NAMES

    assert (AUTO, *SCHEDULER_CLASSES) == SCHEDULER_NAMES == tuple(m.value for m in SchedulerName)

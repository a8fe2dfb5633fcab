"""Every diffusers family end to end through the CLI on a real local Ray: ``dynagen run images`` with StepSaver's
steps (prediction, then batches of one step count), then ``dynagen calibrate`` on two prompts; the per-sample
features a family refuses fail the run in one line before anything starts."""

import json

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from dynagen.app.cli import app
from dynagen.core.storage import Storage
from pipelines.sinks import read_metadata

runner = CliRunner()
SAMPLER = {"sd": "ddim", "sdxl": "euler", "sd3": "flow-euler", "flux": "flow-euler", "pixart-sigma": "dpm++",
           "sana": "flow-euler"}
PROMPTS = ["a red circle", "two blue squares and a green triangle", "a striped yellow star"]


@pytest.mark.parametrize("family", list(SAMPLER))
def test_run_images_with_stepsaver_then_calibrate(ray_local, family_models, family, tmp_path):
    model = family_models[family]
    src = tmp_path / "p.jsonl"
    rows = [{"prompt": p, "id": f"r{i}"} for i, p in enumerate(PROMPTS)]
    rows[0]["negative_prompt"] = "blurry"  # FLUX has none: that row fails, named, the others run
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    r = runner.invoke(app, ["run", "images", "--prompts", str(src), "--out", str(out), "--model", model,
                            "--batch-size", "2", "--steps", "auto"])
    assert r.exit_code == 0, r.output  # a failed input row is recorded; the run itself succeeds
    meta = {m["id"]: m for m in read_metadata(Storage(str(out))).to_pylist()}
    ok = [m for m in meta.values() if m["status"] == "ok"]
    if family == "flux":
        assert meta["r0"]["status"] == "failed" and meta["r0"]["error"] == "FLUX models take no negative prompt"
    assert len(ok) == (2 if family == "flux" else 3)
    size = 64 if family == "sd" else 32
    batches: dict[str, set[int]] = {}
    for m in ok:
        assert m["scheduler"] == SAMPLER[family] and (m["width"], m["height"]) == (size, size)
        assert m["predicted_steps"] >= 1 and m["steps"] == m["predicted_steps"]  # StepSaver's count, run as is
        assert m["unet_evals"] == m["steps"] * (1 if family == "flux" else 2)  # CFG but for guidance-distilled FLUX
        assert (out / "images" / f"{m['id']}.png").is_file()
        batches.setdefault(m["batch_id"], set()).add(m["steps"])
    assert all(len(v) == 1 for v in batches.values())  # grouping: a batch holds one step count

    # StepSaver's labels for this model: two prompts, one seed, a two-count grid.
    cal = tmp_path / "cal.parquet"
    r = runner.invoke(app, ["calibrate", "--prompts", str(_two_prompts(tmp_path)), "--out", str(cal), "--model", model,
                            "--seeds", "0", "--grid", "1,2", "--reference-steps", "3", "--cpus-per-actor", "0.5",
                            "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    table = pq.read_table(cal).to_pylist()
    assert len(table) == 2 and all(t["status"] == "ok" and t["scheduler"] == SAMPLER[family] for t in table)
    assert all(t["steps_swept"] == [1, 2] and t["min_steps"] in (1, 2, 3) for t in table)


def _two_prompts(d):
    f = d / "two.txt"
    f.write_text("a red circle\na blue square\n")
    return f


@pytest.mark.parametrize("flag", ["--early-stop", "--adaptive", "--batching=continuous"])
def test_a_feature_the_family_refuses_fails_the_run_in_one_line(family_models, flag, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "a cat"}) + "\n")
    r = runner.invoke(app, ["run", "images", "--prompts", str(src), "--out", str(tmp_path / "out"),
                            "--model", family_models["flux"], "--steps", "2", flag])
    assert r.exit_code != 0 and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "not supported for FLUX" in lines[0] and "grouped batching" in lines[0]


def test_calibrate_refuses_a_sampler_the_family_does_not_take(family_models, tmp_path):
    r = runner.invoke(app, ["calibrate", "--prompts", str(_two_prompts(tmp_path)), "--out", str(tmp_path / "c.parquet"),
                            "--model", family_models["sd3"], "--scheduler", "ddim", "--grid", "1", "--reference-steps", "2"])
    assert r.exit_code == 2 and "SD3 models run with flow-euler; scheduler 'ddim' is not one of them" in r.output


def test_a_hub_id_missing_from_the_cache_is_one_line(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"prompt": "a cat"}) + "\n")
    r = runner.invoke(app, ["run", "images", "--prompts", str(src), "--out", str(tmp_path / "out"),
                            "--model", "black-forest-labs/FLUX.1-schnell", "--steps", "2"])
    lines = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code != 0 and "Traceback" not in r.output and len(lines) == 1
    assert "no hub id 'black-forest-labs/FLUX.1-schnell' in the local Hugging Face cache " + str(tmp_path / "hub") in lines[0]

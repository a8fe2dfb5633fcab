"""bench/gpu.py's smoke run: every section runs on CPU at toy sizes and writes its figures (no GPU claimed)."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_smoke_run_covers_every_section(ray_local, tmp_path, monkeypatch):
    if not (REPO / "models" / "tiny-sd" / "model_index.json").is_file():
        pytest.skip("committed models/tiny-sd not present")
    from bench.gpu import main
    from dynagen.world.tiny_families import FAMILY_NAMES

    monkeypatch.chdir(REPO)
    out = tmp_path / "gpu.json"
    assert main(["--smoke-test", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["smoke_test"] and r["machine"]["device"] == "cpu"
    assert set(r["families"]) == set(FAMILY_NAMES)
    assert all(f[d]["images_per_s"] > 0 for f in r["families"].values() for d in ("float32", "bfloat16"))
    assert [x["batch"] for x in r["tiny_sd_batch"]["float32"]] == [1, 2]
    assert 0 < r["dtype_drift"]["bfloat16"]["mean_ssim_to_float32"] <= 1
    assert r["job"]["ok"] == 4 and r["job"]["failed"] == 0


def test_without_a_gpu_it_says_so(monkeypatch, capsys):
    import torch

    from bench.gpu import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 2 and "no CUDA device" in capsys.readouterr().err

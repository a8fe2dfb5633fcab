"""bench/continuous.py's smoke run: both modes make the same images, continuous needs fewer UNet calls; the same
with adaptive steps and with early stopping (each sample takes the same steps in both modes)."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_smoke_run_writes_side_by_side_figures(tmp_path, monkeypatch):
    if not (REPO / "models" / "tiny-sd" / "model_index.json").is_file():
        pytest.skip("committed models/tiny-sd not present")
    from bench.continuous import main

    monkeypatch.chdir(REPO)
    out = tmp_path / "c.json"
    assert main(["--smoke-test", "--threads", "1", "--batch-size", "4", "--out", str(out)]) == 0  # 8 rows: 4 wait
    r = json.loads(out.read_text())
    g, c = r["modes"]["grouped"], r["modes"]["continuous"]
    assert all(d <= 1 for d in r["max_pixel_diff"].values()) and len(r["max_pixel_diff"]) == 3
    assert g["unet_evals"] == c["unet_evals"] == 2 * sum(int(k) * v for k, v in r["steps_histogram"].items())
    assert c["unet_calls"] < g["unet_calls"] and c["mean_call_fill"] > g["mean_call_fill"]
    assert c["steady_fill"] == 1.0 and 0 < c["drain_calls"] < c["unet_calls"]  # part-empty calls are the drain only
    ga, ca = r["modes"]["grouped+adaptive"], r["modes"]["continuous+adaptive"]
    assert ga["unet_evals"] == ca["unet_evals"] <= g["unet_evals"]  # adaptive: each row's count is only its cap
    assert ca["unet_calls"] <= ga["unet_calls"]
    ge, ce = r["modes"]["grouped+early-stop"], r["modes"]["continuous+early-stop"]
    assert ge["unet_evals"] == ce["unet_evals"] <= g["unet_evals"]  # the same stops in both modes
    assert ce["unet_calls"] <= ge["unet_calls"]

"""StepSaver predictor: decoding, persistence, bad input, the Ray Data wrapper (pure, then on real Ray)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from actors.stepsaver import (
    CONFIG_FILE,
    HEAD_FILE,
    ArtifactError,
    StepPredictor,
    StepSaverActor,
    decode_steps,
    validate_prompt,
)

GRID = [4, 8, 16, 32]
REPO = Path(__file__).resolve().parents[2]


# 1. Pure helpers -------------------------------------------------------------------------------------------


def test_decode_on_grid_and_monotone_in_risk():
    rng = np.random.default_rng(0)
    p = rng.random((200, len(GRID) - 1))  # deliberately not monotone along the grid
    risks = np.linspace(0, 1, 21)
    steps = np.stack([decode_steps(p, GRID, r) for r in risks])
    assert set(np.unique(steps)) <= set(GRID)
    # lowering the risk (raising the quality target) never lowers any prompt's steps
    assert np.all(np.diff(steps, axis=0) <= 0)
    assert np.all(decode_steps(p, GRID, -1.0) == GRID[-1])  # nothing qualifies: the largest bucket


def test_validate_prompt():
    assert validate_prompt("a red circle") is None
    assert "empty" in validate_prompt("")
    assert "whitespace" in validate_prompt(" \n\t")
    assert "string" in validate_prompt(None) and "string" in validate_prompt(42)
    assert "characters" in validate_prompt("x" * 5000)
    assert validate_prompt("x" * 3000) is None  # long but allowed: the encoder truncates to its token window


# 2. A small trained predictor ------------------------------------------------------------------------------

PROMPTS = [
    "a red circle on a white background", "a blue square on a black background", "a green star on a gray background",
    "a yellow circle in the center on a beige background", "a pink square at the top on a white background",
    "a purple striped star on the left and an orange dotted triangle on the right on a gray background",
    "three small green striped stars on a black background", "a red dotted diamond on the left and a blue striped "
    "star at the top and a white triangle on the right on a beige background", "two small pink dotted triangles on a "
    "light blue background", "a black striped star at the bottom and a yellow dotted circle at the top on a white "
    "background",
]


@pytest.fixture(scope="module")
def trained(train_toy_stepsaver):
    return train_toy_stepsaver(PROMPTS, GRID)


def test_round_trip_identical_predictions(trained):
    predictor, _, path = trained
    assert sorted(p.name for p in path.iterdir()) == [CONFIG_FILE, HEAD_FILE]  # no encoder weights copied
    loaded = StepPredictor.load(path, encoder=predictor.encoder)
    np.testing.assert_array_equal(predictor.exceed_probs(PROMPTS), loaded.exceed_probs(PROMPTS))
    assert loaded.predict_steps(PROMPTS) == predictor.predict_steps(PROMPTS)
    assert loaded.config.grid == GRID and loaded.config.risk == predictor.config.risk


def test_predictions_on_grid_and_monotone(trained):
    predictor, metrics, _ = trained
    steps = predictor.predict_steps(PROMPTS)
    assert set(steps) <= set(GRID) and all(isinstance(s, int) for s in steps)
    by_risk = [predictor.predict_steps(PROMPTS, risk=r) for r in (0.9, 0.5, 0.2, 0.05, 0.0)]
    for hi, lo in zip(by_risk, by_risk[1:]):
        assert all(a <= b for a, b in zip(hi, lo))
    assert 0 <= metrics["heldout"]["under_step_rate"] <= 1 and metrics["prompts"] == len(PROMPTS)
    # batch composition and order do not change a prompt's prediction
    assert predictor.predict_steps(PROMPTS[::-1])[::-1] == steps
    assert predictor.predict_steps([PROMPTS[5]]) == [steps[5]]


def test_bad_inputs_per_prompt(trained):
    predictor, _, _ = trained
    batch = ["a red circle on a white background", "", "   ", None, "x" * 5000, "word " * 600]
    steps, errors = predictor.predict_checked(batch)
    assert errors[0] is None and steps[0] in GRID
    assert [e is not None for e in errors] == [False, True, True, True, True, False]
    assert steps[1:5] == [0, 0, 0, 0] and steps[5] in GRID  # 3000 chars: truncated to the token window, scored
    with pytest.raises(ValueError, match="prompt 2: prompt is whitespace-only"):
        predictor.predict_steps(["ok", "fine", "  "])
    with pytest.raises(ValueError, match="list of prompts"):
        predictor.predict_steps("a red circle")
    assert predictor.predict_steps([]) == []


def test_missing_or_corrupt_artifact(trained, tmp_path):
    _, _, path = trained
    with pytest.raises(ArtifactError, match="not found"):
        StepPredictor.load(tmp_path / "nope")
    for name in (HEAD_FILE, CONFIG_FILE):
        broken = tmp_path / f"no-{name}"
        shutil.copytree(path, broken)
        (broken / name).unlink()
        with pytest.raises(ArtifactError, match=f"missing {name}"):
            StepPredictor.load(broken)
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / HEAD_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ArtifactError, match=HEAD_FILE):
        StepPredictor.load(bad)
    (bad / CONFIG_FILE).write_text("{")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        StepPredictor.load(bad)
    cfg = json.loads((path / CONFIG_FILE).read_text())
    cfg["grid"] = [8, 4]
    (bad / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="grid"):
        StepPredictor.load(bad)


# 3. The Ray Data wrapper -----------------------------------------------------------------------------------


def _batch():
    return {
        "id": np.array(["a", "b", "c", "d", "e"]),
        "prompt": np.array(["a red circle on a white background", "two small blue squares on a black background",
                            "   ", "a green star", "a purple striped star on the left"], dtype=object),
        "status": np.array(["ok", "ok", "ok", "failed", "ok"]),
        "steps": np.array([0, 0, 0, 0, 17]),
        "error": np.array(["", "", "", "empty prompt", ""]),
    }


def test_actor_failed_rows_and_overrides(trained):
    _, _, path = trained
    actor = StepSaverActor(str(path), num_threads=1)
    out = actor(_batch())
    assert list(out["id"]) == ["a", "b", "c", "d", "e"]
    assert out["predicted_steps"][0] in GRID and out["steps"][0] == out["predicted_steps"][0]
    assert out["predicted_steps"][1] in GRID
    assert out["status"][2] == "failed" and "whitespace" in out["error"][2] and out["predicted_steps"][2] == 0
    assert out["status"][3] == "failed" and out["error"][3] == "empty prompt"  # untouched
    assert out["steps"][3] == 0 and out["predicted_steps"][3] == 0
    assert out["steps"][4] == 17 and out["predicted_steps"][4] == 0  # per-row override wins, no prediction


def test_actor_on_ray(ray_local, trained):
    import ray

    _, _, path = trained
    b = _batch()
    items = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in b.items()} for i in range(5)]
    ds = ray.data.from_items(items).map_batches(
        StepSaverActor, fn_constructor_kwargs={"path": str(path), "num_threads": 1}, batch_size=8,
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=1), num_cpus=0.5,
    )
    rows = {r["id"]: r for r in ds.take_all()}
    assert rows["a"]["predicted_steps"] in GRID and rows["a"]["steps"] == rows["a"]["predicted_steps"]
    assert rows["c"]["status"] == "failed" and rows["d"]["error"] == "empty prompt"
    assert rows["e"]["steps"] == 17 and rows["e"]["predicted_steps"] == 0


# 4. The committed artifact -----------------------------------------------------------------------------------


def test_committed_artifact_loads_and_predicts_on_grid():
    path = REPO / "models" / "stepsaver"
    if not (path / CONFIG_FILE).is_file():
        pytest.skip(f"no committed StepSaver artifact at {path}")
    predictor = StepPredictor.load(path, num_threads=1)
    steps = predictor.predict_steps(PROMPTS)
    assert set(steps) <= set(predictor.grid)
    assert predictor.config.calibration.get("model")  # provenance recorded


@pytest.fixture(scope="module")
def committed():
    path = REPO / "models" / "stepsaver"
    if not (path / CONFIG_FILE).is_file():
        pytest.skip(f"no committed StepSaver artifact at {path}")
    return StepPredictor.load(path, num_threads=1)


def test_a_prompts_steps_do_not_depend_on_its_batch(committed):
    """Property: a prompt gets the same steps alone and inside any batch, through the job's actor and through the
    predictor call Serve batches requests with (its int8 encoder once quantised activations per batch: 'a red circle'
    got 30 alone and 25 beside 'a star')."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from dynagen.world import synth

    pool = ["a red circle", "a star", "shapes", "a shape on a dark background"] + synth.example_prompts(40, 7) + [
        "an astronaut riding a horse, highly detailed, trending on artstation, 8k", "x " * 200]
    alone = {p: committed.predict_steps([p])[0] for p in pool}
    actor = StepSaverActor(str(REPO / "models" / "stepsaver"), num_threads=1)  # the job's wrapper, loaded apart

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from(pool), min_size=1, max_size=24))
    def check(batch):
        assert committed.predict_checked(batch)[0] == [alone[p] for p in batch]  # Serve's call
        n = len(batch)
        out = actor({"prompt": np.array(batch, dtype=object), "status": np.array(["ok"] * n),
                     "steps": np.zeros(n, dtype=np.int64), "error": np.array([""] * n)})
        assert out["steps"].tolist() == [alone[p] for p in batch]  # the job's

    check()
    assert committed.predict_steps(["a red circle", "a star"])[0] == alone["a red circle"]
    # Stronger than the steps: the embedding itself is bit-identical alone and in a batch.
    emb = committed.encoder.encode(pool)
    np.testing.assert_array_equal(emb[:3], np.stack([committed.encoder.encode([p])[0] for p in pool[:3]]))

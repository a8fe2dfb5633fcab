"""Routers: pure metrics and calibration, the registry, the committed learned router, the Ray Data wrapper (no Ray)."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from actors.router import (
    LARGE, SMALL, Calibration, RandomRouter, Router, RouterActor, RouterError, apgr, calibration_split,
    check_share, cpt, default_path, get_router, holdout_split, pgr_curve, route_metrics,
)

# 1. Pure helpers ---------------------------------------------------------------------------------------------------


def outcomes(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    weak = (rng.random(n) < 0.65).astype(float)
    strong = np.maximum(weak, (rng.random(n) < 0.5).astype(float))  # strong solves what weak does, and more
    return weak, strong


def test_pgr_curve_ends_and_oracle_beats_random():
    weak, strong = outcomes()
    shares, pgr = pgr_curve(np.random.default_rng(1).random(len(weak)), weak, strong)
    assert shares[0] == 0 and shares[-1] == 1 and pgr[0] == pytest.approx(0) and pgr[-1] == pytest.approx(1)
    assert apgr(shares, pgr) == pytest.approx(0.5, abs=0.03)
    o_shares, o_pgr = pgr_curve(strong - weak, weak, strong)
    assert apgr(o_shares, o_pgr) > 0.9
    assert cpt(o_shares, o_pgr, 1.0) == pytest.approx(np.mean(strong - weak), abs=1e-6)  # exactly the gain rows
    m = route_metrics(strong - weak, weak, strong)
    assert m["cpt50"] < m["cpt80"] <= m["share_for_95pct_strong"] + 1e-9 or m["share_for_95pct_strong"] < m["cpt80"]
    with pytest.raises(ValueError):
        pgr_curve([0.1, 0.2], [1, 1], [1, 1])  # no gap to recover


def test_holdout_split_is_deterministic_and_about_a_quarter():
    prompts = [f"question {i}" for i in range(4000)]
    a, b = holdout_split(prompts), holdout_split(list(prompts))
    assert (a == b).all() and 0.22 < a.mean() < 0.28
    assert holdout_split(["same", "same"]).tolist() in ([True, True], [False, False])
    assert 0.45 < calibration_split(prompts).mean() < 0.55


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.3"])
def test_share_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        check_share(bad)


def test_calibration_hits_the_target_share_on_fresh_scores():
    rng = np.random.default_rng(0)
    cal = Calibration.fit(rng.beta(2, 5, 5000))
    fresh = rng.beta(2, 5, 5000)  # same distribution, prompts the thresholds never saw
    for share in (0.05, 0.3, 0.5, 0.9):
        assert abs(np.mean(fresh >= cal.threshold(share)) - share) < 0.05
    assert cal.threshold(0.0) == math.inf and cal.threshold(1.0) == -math.inf
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))).threshold(0.3) == pytest.approx(cal.threshold(0.3))
    with pytest.raises(RouterError, match="non-decreasing"):
        Calibration.from_json({"quantiles": [0.5, 0.1]})


def test_routing_lives_in_the_base_class():
    class Fixed(Router):
        def score(self, prompts):
            return [float(p) for p in prompts]

    assert Fixed().route(["0.1", "0.5", "0.9"], 0.5) == [SMALL, LARGE, LARGE]
    scores, reasons = Fixed().score_checked(["0.2", "", "  ", 3])
    assert scores[0] == 0.2 and all(math.isnan(s) for s in scores[1:])
    assert reasons == [None, "prompt is empty", "prompt is whitespace-only", "prompt must be a string, got int"]


def test_random_router_is_uniform_deterministic_and_calibrated():
    r = get_router("random")
    prompts = [f"p{i}" for i in range(3000)]
    s = r.score(prompts)
    assert s == RandomRouter().score(prompts) and all(0 <= v < 1 for v in s)
    assert abs(r.route(prompts, r.threshold(0.3)).count(LARGE) / 3000 - 0.3) < 0.05


def test_registry_and_artifact_errors(tmp_path):
    with pytest.raises(RouterError, match="unknown router 'nope'"):
        get_router("nope")
    with pytest.raises(RouterError, match="not found"):
        get_router("learned", tmp_path / "missing", load_encoder=False)
    for f in ("config.json", "head.safetensors", "calibration.json"):
        d = tmp_path / f
        shutil.copytree(default_path(), d)
        (d / f).unlink()
        with pytest.raises(RouterError, match=f.replace(".", r"\.")):
            get_router("learned", d, load_encoder=False)
    d = tmp_path / "garbled"
    shutil.copytree(default_path(), d)
    (d / "head.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(RouterError, match="unreadable"):
        get_router("learned", d, load_encoder=False)


# 2. The committed learned router (real MiniLM encoder) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def learned():
    return get_router("learned", num_threads=2)


def test_learned_router_scores_in_unit_interval_independent_of_batch(learned):
    prompts = ["What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", "Which of these two scenarios is morally wrong?",
               "Find the degree of the field extension Q(sqrt(2)) over Q.", "Who wrote Hamlet?"]
    s = learned.score(prompts)
    assert all(0.0 <= v <= 1.0 for v in s)
    # Per-token int8 scales and unpadded batches: the embedding is bit-identical in any batch; only the fp32 heads
    # leave last-bit noise.
    for i in range(len(prompts)):
        assert learned.score(prompts[i : i + 1])[0] == pytest.approx(s[i], abs=1e-6)
    assert learned.score(prompts[::-1])[::-1] == pytest.approx(s, abs=1e-6)
    assert learned.route(prompts, learned.threshold(1.0)) == [LARGE] * 4
    assert learned.route(prompts, learned.threshold(0.0)) == [SMALL] * 4


def test_stored_metrics_meet_the_targets():
    metrics = json.loads((default_path() / "config.json").read_text())["metrics"]["validation"]
    assert metrics["learned"]["apgr"] >= 0.66 and metrics["learned"]["cpt50"] <= 0.28
    assert metrics["learned"]["apgr"] > metrics["probe"]["apgr"]


def test_realised_share_on_unseen_mmlu_prompts_is_within_5_points(learned, shared_dir):
    import pyarrow.parquet as pq

    prompts = pq.read_table(shared_dir / "data" / "routing" / "mmlu_routing_train.parquet", columns=["prompt"])["prompt"].to_pylist()
    val = [p for p, v in zip(prompts, holdout_split(prompts)) if v]
    # Thresholds were fitted on the other half. Every 3rd row, not the first 400: the file is grouped by subject.
    unseen = [p for p, c in zip(val, calibration_split(val)) if not c][::3]
    scores = np.asarray(learned.score(unseen))
    for share in (0.2, 0.5):
        assert abs(np.mean(scores >= learned.threshold(share)) - share) <= 0.05


# 3. The Ray Data wrapper, called directly ------------------------------------------------------------------------------


def batch(prompts, status=None):
    n = len(prompts)
    return {"id": np.asarray([f"r{i}" for i in range(n)], dtype=object), "prompt": np.asarray(prompts, dtype=object),
            "status": np.asarray(status or ["ok"] * n, dtype=object), "error": np.asarray([""] * n, dtype=object)}


def test_router_actor_routes_ok_rows_and_fails_blank_ones():
    actor = RouterActor("random", None, large_share=0.5)
    out = actor(batch([f"prompt {i}" for i in range(200)] + ["   ", "already bad"], status=["ok"] * 201 + ["failed"]))
    assert set(out["route"][:200]) == {SMALL, LARGE} and list(out["route"][200:]) == ["", ""]
    assert out["status"][200] == "failed" and out["error"][200] == "prompt is whitespace-only"
    assert math.isnan(out["router_score"][201]) and out["status"][201] == "failed"


def test_per_batch_mode_hits_the_share_exactly():
    actor = RouterActor("random", None, large_share=0.3, share_mode="per_batch")
    out = actor(batch([f"prompt {i}" for i in range(100)]))
    assert list(out["route"]).count(LARGE) == 30
    large_scores = out["router_score"][out["route"] == LARGE]
    assert large_scores.min() >= out["router_score"][out["route"] == SMALL].max()


# 4. Share mode 'job': this job's own quantile -----------------------------------------------------------------------


def test_job_cut_holds_the_share_on_a_skewed_mix_where_calibration_drifts():
    from actors.router import Calibration, apply_cut, job_cut

    rng = np.random.default_rng(0)
    calibration = Calibration.fit(rng.uniform(0, 1, 5000))  # scores like the calibration set: uniform
    # A mix unlike it: most prompts score high, and a block of exact ties sits right at the cut.
    scores = np.concatenate([rng.beta(8, 2, 170), np.full(30, 0.5)])
    ids = [f"q{i:03d}" for i in range(len(scores))]
    drift = np.mean(scores >= calibration.threshold(0.3))
    assert drift > 0.6  # the calibrated threshold sends most of this mix large
    for share in (0.0, 0.05, 0.3, 0.9, 0.95, 1.0):
        b = {"id": np.asarray(ids, dtype=object), "router_score": scores,
             "route": np.asarray(["pending"] * len(scores), dtype=object)}
        route = apply_cut(b, job_cut(scores, ids, share))["route"]
        assert list(route).count(LARGE) == int(np.floor(share * len(scores) + 0.5))  # exact, ties included
        if 0 < share < 1:
            assert scores[route == LARGE].min() >= scores[route == SMALL].max()


def test_job_cut_ignores_unscored_rows_and_is_stable_across_batches():
    from actors.router import goes_large, job_cut

    scores = [0.2, math.nan, 0.9, 0.5, 0.5]
    ids = ["a", "b", "c", "d", "e"]
    cut = job_cut(scores, ids, 0.5)  # 4 scored rows → 2 large: c, then the tie 0.5 broken by id (e over d)
    assert [goes_large(s, i, cut) for s, i in zip(scores, ids)] == [False, False, True, False, True]
    assert job_cut(scores, ids, 0.0) is None and job_cut([], [], 0.5) is None


def test_router_actor_in_job_mode_only_scores():
    actor = RouterActor("random", None, large_share=0.3, share_mode="job")
    out = actor(batch(["a prompt", "  "]))
    assert list(out["route"]) == ["pending", ""] and 0 <= out["router_score"][0] <= 1

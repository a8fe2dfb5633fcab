"""Causal-LM actor: pure helpers, then the core on the embedded tiny models (CPU, no Ray)."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from actors.llm import (
    LLMActor, LLMCore, ModelLoadError, check_model_dir, completion_length, fit_to_context, plan_batches,
)

REPO = Path(__file__).resolve().parents[2]
SMALL, LARGE = str(REPO / "models" / "llm-small"), str(REPO / "models" / "llm-large")


def rows(prompts, status=None):
    n = len(prompts)
    return {"id": [f"r{i}" for i in range(n)], "prompt": list(prompts), "status": status or ["ok"] * n, "error": [""] * n}


# 1. Pure helpers -------------------------------------------------------------------------------------------------


def test_plan_batches_sorts_by_length_and_respects_batch_size():
    lengths = [3, 10, 1, 7, 7, 2]
    batches = plan_batches(lengths, 2)
    assert [len(b) for b in batches] == [2, 2, 2]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(6))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert plan_batches([], 4) == []


def test_fit_to_context_truncates_from_the_left_or_fails():
    ids = list(range(10))
    assert fit_to_context(ids, 10, "fail") == (ids, "")
    kept, note = fit_to_context(ids, 4, "truncate")
    assert kept == [6, 7, 8, 9] and "last 4 of 10" in note
    kept, note = fit_to_context(ids, 4, "fail")
    assert kept is None and "10 tokens" in note


def test_completion_length_stops_at_first_eos():
    assert completion_length([5, 6, 0, 0, 0], {0}) == 3
    assert completion_length([5, 6, 7], {0}) == 3


def test_check_model_dir_names_the_missing_piece(tmp_path):
    assert check_model_dir(SMALL) == "local"
    assert check_model_dir("Qwen/Qwen2.5-0.5B-Instruct") == "hub"
    with pytest.raises(ModelLoadError, match="not found"):
        check_model_dir(tmp_path / "nope")
    for missing, msg in (("model.safetensors", "no weights"), ("tokenizer.json", "no tokenizer"), ("config.json", "config.json")):
        d = tmp_path / missing
        shutil.copytree(SMALL, d)
        (d / missing).unlink()
        with pytest.raises(ModelLoadError, match=msg):
            check_model_dir(d)
    d = tmp_path / "pickle"
    shutil.copytree(SMALL, d)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        check_model_dir(d)


# 2. The core on the tiny models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_core():
    # A 24-token prompt cap stands in for a small context: over-context cases stay cheap to run.
    return LLMCore(SMALL, max_new_tokens=6, batch_size=3, max_prompt_tokens=24, num_threads=1)


def test_batched_generation_matches_one_by_one(small_core):
    prompts = ["hi", "What is the capital of France? Answer:", "Which gas do plants absorb?", "2+2=", "Name a prime."]
    out = small_core.run(rows(prompts))
    assert out["status"] == ["ok"] * 5
    # Left padding: a prompt's answer does not depend on what shares its batch.
    alone = [small_core.run(rows([p]))["response"][0] for p in prompts]
    assert out["response"] == alone
    assert all(0 < c <= 6 for c in out["completion_tokens"])
    assert out["prompt_tokens"] == [len(small_core.tokenize([p])[0]) for p in prompts]
    assert set(out["batch_size"]) <= {2, 3} and all(ms > 0 for ms in out["latency_ms"])
    assert out["model"] == [SMALL] * 5


def test_over_context_prompt_is_truncated_and_flagged_or_fails(small_core):
    long = "word " * 60
    out = small_core.run(rows(["short prompt", long]))
    assert out["status"] == ["ok", "ok"] and out["truncated"] == [False, True]
    assert out["prompt_tokens"][1] == small_core.prompt_budget and "truncated" in out["error"][1]
    strict = LLMCore(SMALL, max_new_tokens=6, batch_size=3, over_context="fail", max_prompt_tokens=24, num_threads=1)
    out = strict.run(rows(["short prompt", long]))
    assert out["status"] == ["ok", "failed"] and "tokens" in out["error"][1] and out["response"][1] is None
    assert out["response"][0]  # the other row is still answered


def test_failed_rows_pass_through_untouched(small_core):
    r = rows(["fine", ""], status=["ok", "failed"])
    r["error"][1] = "empty prompt"
    out = small_core.run(r)
    assert out["status"] == ["ok", "failed"] and out["error"][1] == "empty prompt" and out["response"][1] is None


def test_bad_settings_fail_at_load(tmp_path):
    with pytest.raises(ModelLoadError, match="no room"):
        LLMCore(SMALL, max_new_tokens=5000)
    with pytest.raises(ModelLoadError, match="not found"):
        LLMCore(str(tmp_path / "missing"))


def test_actor_wrapper_on_a_numpy_batch():
    actor = LLMActor(model=LARGE, max_new_tokens=4, batch_size=2, num_threads=1)
    batch = {k: np.asarray(v, dtype=object) for k, v in rows(["a question?", "another one"]).items()}
    out = actor(batch)
    assert list(out["status"]) == ["ok", "ok"] and out["completion_tokens"].dtype.kind == "i"
    assert all(isinstance(r, str) for r in out["response"])

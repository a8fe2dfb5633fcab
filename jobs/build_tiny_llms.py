"""Build the embedded tiny causal LMs (``models/llm-small``, ``models/llm-large``) from configs, offline.

They exist to wire and test the LLM job without a hub or a GPU: random weights, so their answers are
gibberish. Point the job at real models (``--small-model``/``--large-model``: any HF id or local folder) on a
cluster. Deterministic: the same corpus and seed give the same files.

    python -m jobs.build_tiny_llms [--corpus ../shared/data/routing/mmlu_routing_train.parquet] [--out models]

The tokenizer is a byte-level BPE (1,024 tokens) trained on the corpus' prompt column, so any text encodes
(no unknown tokens) at ~3-4 characters per token. Small = GPT-2 layout, large = Llama layout (two architectures,
so the job is exercised with learned and rotary positions). Each folder stays under 2 MB.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "routing" / "mmlu_routing_train.parquet"
VOCAB = 1024
CONTEXT = 1024
EOS = "<|endoftext|>"
# Used when the corpus is absent: the build still works, the tokenizer is just less efficient.
FALLBACK_TEXT = (
    "The following are multiple choice questions (with answers). Which of the following is true? A. B. C. D. Answer: "
    "What is the capital of France? Explain how photosynthesis works. Write a short poem about the sea. "
) * 50


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   model_max_length=CONTEXT)


def build_models(tokenizer, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    eos = tokenizer.eos_token_id
    torch.manual_seed(seed)
    small = GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_positions=CONTEXT, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    ))
    torch.manual_seed(seed + 1)
    large = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=CONTEXT, tie_word_embeddings=True,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
    ))
    return small.eval(), large.eval()


README = """# {name}: a tiny random causal LM for wiring only

Built by `python -m jobs.build_tiny_llms` from a config ({arch}, {params:,} parameters, random weights) with a
1,024-token byte-level BPE tokenizer. Its answers are **gibberish**: it exists so `dynagen run llm` runs end to
end offline, on CPU, in tests. For real answers pass real models, e.g. on a GPU cluster:

    dynagen run llm --prompts s3://bucket/prompts/ --out s3://bucket/answers/ \\
        --small-model Qwen/Qwen2.5-0.5B-Instruct --large-model Qwen/Qwen2.5-7B-Instruct

(any Hugging Face id or local folder with config.json, tokenizer files and *.safetensors; set
`llm.gpus_per_actor` in the settings file).
"""


def main(argv: list[str] | None = None) -> int:
    import pyarrow.parquet as pq

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="Parquet with a 'prompt' column for the tokenizer.")
    p.add_argument("--out", default=str(REPO / "models"), help="Folder that receives llm-small/ and llm-large/.")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    corpus = Path(a.corpus)
    texts = pq.read_table(corpus, columns=["prompt"])["prompt"].to_pylist() if corpus.is_file() else [FALLBACK_TEXT]
    tokenizer = build_tokenizer(texts)
    small, large = build_models(tokenizer, a.seed)
    for name, model, arch in (("llm-small", small, "GPT-2 layout"), ("llm-large", large, "Llama layout")):
        out = Path(a.out) / name
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / "model.safetensors").chmod(0o644)  # safetensors writes 0600; the folder is committed
        params = sum(p.numel() for p in model.parameters())
        (out / "README.md").write_text(README.format(name=name, arch=arch, params=params))
        (out / "dynagen.json").write_text(json.dumps({"built_by": "jobs.build_tiny_llms", "corpus": corpus.name,
                                                       "seed": a.seed, "wiring_only": True}, indent=2) + "\n")
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"{out}: {arch}, {params:,} params, {size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

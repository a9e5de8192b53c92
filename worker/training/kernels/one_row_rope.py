"""Liger's RoPE with a batch's rows laid end to end as one row, so that Triton compiles it once per model.

Liger's `_triton_rope` takes the batch size (and the batch size of cos/sin) as compile-time constants
(`tl.constexpr`, liger-kernel 0.8.5, liger_kernel/ops/rope.py). Packed micro-batches have a different number of
rows almost every step, so a fresh worker compiled the kernel again and again inside its first job's steps:
0.2-0.5 s each (bench/RESULTS-2026-11-23.md), and on an H100 a fresh worker's first 1B QLoRA job trained at
29.5k useful tokens/s against 48.1k for the next one (bench/RESULTS-2026-12-06.md, section 4).

RoPE rotates each token by its own position's angle: nothing in it crosses tokens. So [b, heads, s, d] queries and
keys are viewed as [1, heads, b*s, d], with each token's cos/sin beside it, and rotated in one call whose batch
size is always 1. The sequence length is a runtime argument. The views cost no copy where the attention made q
and k as `.view(b, s, h, d).transpose(1, 2)`, as transformers' Llama, Mistral, Qwen and Gemma attention do.
"""

from __future__ import annotations

import functools
import sys

import torch

FOLDED = "_ftaas_one_row"  # marks a RoPE function already wrapped


def one_row(rope):
    """`rope(q, k, cos, sin)` called with the batch folded into one row. A call with more arguments (a position_ids
    or an unsqueeze_dim other than the default) goes to `rope` as it is: transformers' attention passes none."""

    @functools.wraps(rope)
    def apply(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *args, **kwargs):
        b, s = q.shape[0], q.shape[-2]
        if args or kwargs or b == 1 or q.dim() != 4 or cos.dim() != 3:
            return rope(q, k, cos, sin, *args, **kwargs)

        def fold(x: torch.Tensor) -> torch.Tensor:  # [b, h, s, d] -> [1, h, b*s, d]
            return x.transpose(1, 2).reshape(1, b * s, x.shape[1], x.shape[3]).transpose(1, 2)

        def unfold(x: torch.Tensor, heads: int) -> torch.Tensor:  # [1, h, b*s, d] -> [b, h, s, d]
            return x.transpose(1, 2).reshape(b, s, heads, x.shape[3]).transpose(1, 2)

        def per_token(t: torch.Tensor) -> torch.Tensor:  # [b or 1, s, d] -> [1, b*s, d]
            return t.expand(b, s, t.shape[-1]).reshape(1, b * s, t.shape[-1])

        q1, k1 = rope(fold(q), fold(k), per_token(cos), per_token(sin))
        return unfold(q1, q.shape[1]), unfold(k1, k.shape[1])

    setattr(apply, FOLDED, True)
    return apply


def fold_rope_of(model, liger_rope) -> bool:
    """Where Liger has put `liger_rope` as the model's module-level apply_rotary_pos_emb (its patch for Llama,
    Mistral, Qwen 2/3, Gemma and more), wrap it with one_row. Returns whether it did."""
    module = sys.modules.get(type(model).__module__)
    rope = getattr(module, "apply_rotary_pos_emb", None)
    if rope is not liger_rope or getattr(rope, FOLDED, False):
        return False
    module.apply_rotary_pos_emb = one_row(rope)
    return True

"""RoPE with the batch folded into one row (worker/training/kernels/one_row_rope.py) equals RoPE per row: outputs and
gradients, with cos/sin per row (packed rows restart their positions) and shared by the batch. On the CPU the
inner function is transformers' own eager RoPE; bench/gpu_checks.py checks Liger's kernel inside it on a GPU."""

from __future__ import annotations

import types

import pytest
import torch
from transformers.models.llama import modeling_llama

from worker.training.kernels.one_row_rope import fold_rope_of, one_row

EAGER = modeling_llama.apply_rotary_pos_emb


def angles(position_ids: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = position_ids[..., None].float() * inv
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def qk(b: int, s: int, hq: int, hk: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    # as the attention makes them: a [b, s, h, d] projection viewed as [b, h, s, d]
    q = torch.randn(b, s, hq, d, generator=g).transpose(1, 2).requires_grad_()
    k = torch.randn(b, s, hk, d, generator=g).transpose(1, 2).requires_grad_()
    return q, k


@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("b", [1, 3])
def test_folded_rope_equals_rope_per_row(per_row, b):
    s, hq, hk, d = 7, 4, 2, 8
    if per_row:  # packed rows: each row's examples restart at position 0
        position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6], [0, 0, 1, 2, 0, 1, 2]])[:b]
    else:
        position_ids = torch.arange(s)[None]
    cos, sin = angles(position_ids, d)
    grads = []
    outs = []
    for fn in (EAGER, one_row(EAGER)):
        q, k = qk(b, s, hq, hk, d, seed=1)
        q_out, k_out = fn(q, k, cos, sin)
        assert q_out.shape == (b, hq, s, d) and k_out.shape == (b, hk, s, d)
        (q_out.square().sum() + (k_out * 3).sum()).backward()
        outs.append((q_out.detach(), k_out.detach()))
        grads.append((q.grad, k.grad))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_the_inner_rope_always_sees_one_row():
    seen = []

    def spy(q, k, cos, sin):
        seen.append((q.shape[0], cos.shape[0], q.shape[2]))
        return EAGER(q, k, cos, sin)

    for b in (2, 5, 8):
        q, k = qk(b, 6, 4, 2, 8, seed=b)
        cos, sin = angles(torch.arange(6).expand(b, 6), 8)
        one_row(spy)(q, k, cos, sin)
    assert seen == [(1, 1, 12), (1, 1, 30), (1, 1, 48)]


def test_fold_rope_of_wraps_only_the_function_liger_installed_and_only_once():
    module = types.ModuleType("fake_modeling")
    model_type = type("FakeForCausalLM", (), {"__module__": "fake_modeling"})

    def liger(q, k, cos, sin):
        return q, k

    import sys

    sys.modules["fake_modeling"] = module
    try:
        module.apply_rotary_pos_emb = EAGER  # Liger not applied: left alone
        assert not fold_rope_of(model_type(), liger) and module.apply_rotary_pos_emb is EAGER
        module.apply_rotary_pos_emb = liger
        assert fold_rope_of(model_type(), liger)
        wrapped = module.apply_rotary_pos_emb
        assert wrapped is not liger and wrapped.__wrapped__ is liger
        assert not fold_rope_of(model_type(), liger) and module.apply_rotary_pos_emb is wrapped
    finally:
        del sys.modules["fake_modeling"]


def test_a_call_with_more_arguments_goes_through_unfolded():
    seen = []

    def spy(q, k, cos, sin, unsqueeze_dim=1):
        seen.append((q.shape[0], unsqueeze_dim))
        return EAGER(q, k, cos, sin, unsqueeze_dim)

    q, k = qk(3, 5, 2, 2, 4, seed=0)
    cos, sin = angles(torch.arange(5)[None], 4)
    one_row(spy)(q, k, cos, sin, unsqueeze_dim=1)
    one_row(spy)(q, k, cos, sin, 1)
    assert seen == [(3, 1), (3, 1)]

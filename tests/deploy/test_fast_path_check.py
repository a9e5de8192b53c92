"""The worker image's build check (worker/training/kernels/fast_path.py): it names what is missing and fails."""

from __future__ import annotations

import pytest

from worker.training.kernels import fast_path, varlen_attention


@pytest.fixture
def varlen_fn(monkeypatch):
    """Stand in for torch's varlen_attn (or its absence) in varlen_attention.supported()."""

    def use(fn):
        monkeypatch.setattr(varlen_attention, "_varlen_fn", lambda: fn)
        varlen_attention.supported.cache_clear()

    yield use
    varlen_attention.supported.cache_clear()


def test_varlen_support_needs_a_causal_form(varlen_fn):
    varlen_fn(None)
    assert not varlen_attention.supported()
    varlen_fn(lambda q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, is_causal=False: None)  # first releases
    assert varlen_attention.supported()
    varlen_fn(lambda q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1): None)  # later ones
    assert varlen_attention.supported()
    varlen_fn(lambda q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None: None)  # a form _causal_varlen cannot drive
    assert not varlen_attention.supported()


def test_check_fails_and_says_what_is_missing(varlen_fn, capsys):
    varlen_fn(None)
    assert fast_path.main() == 1
    out = capsys.readouterr().out
    assert "MISSING varlen attention (packed rows)" in out and "torch.nn.attention.varlen" in out


def test_check_passes_when_everything_is_there(varlen_fn, monkeypatch, capsys):
    import torch

    varlen_fn(lambda q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1): None)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr("worker.training.kernels.fused.liger_installed", lambda: True)
    assert fast_path.main() == 0
    assert "MISSING" not in capsys.readouterr().out

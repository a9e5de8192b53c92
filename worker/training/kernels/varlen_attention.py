"""Attention over packed rows as variable-length sequences (PyTorch's flash-attention `varlen_attn`).

A packed row holds several examples that must not see each other. Given only position ids, transformers
builds a block-diagonal [rows, 1, length, length] mask for SDPA, and with an arbitrary mask SDPA can use
neither its flash kernel nor (once we keep it off its cuDNN backend, see worker.training.modeling) anything but the
memory-efficient kernel, which computes every masked-out block too: 20% of a 1B LoRA step on an H200. Here
the rows are flattened into one token stream with cumulative sequence boundaries, and each example attends
causally to itself only, with no mask and no wasted blocks. The boundaries come from the position ids
(each example's restart at 0, the padding tail included as a sequence of its own).

Used for the training forward of packed batches on a GPU whose PyTorch has `torch.nn.attention.varlen`;
everything else (evaluation, generation, CPUs) keeps the model's own attention.
"""

from __future__ import annotations

import contextlib
import functools
import inspect

import torch

NAME = "ftaas_varlen"


def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.cache
def supported() -> bool:
    """This PyTorch has `varlen_attn` in a form `_causal_varlen` can make causal (the worker image's build checks
    it: worker/training/kernels/fast_path.py). Cached: the answer cannot change within a process."""
    fn = _varlen_fn()
    if fn is None:
        return False
    params = inspect.signature(fn).parameters
    return "is_causal" in params or "window_size" in params


def available(device: torch.device) -> bool:
    return device.type == "cuda" and supported()


def _causal_varlen(q, k, v, cu, max_len: int, scale: float | None):
    fn = _varlen_fn()
    params = inspect.signature(fn).parameters
    kwargs = {"scale": scale}
    if "is_causal" in params:  # the first releases
        kwargs["is_causal"] = True
    else:  # later ones express causality as a window reaching back without limit and not forward
        kwargs["window_size"] = (-1, 0)
    if q.shape[1] != k.shape[1]:  # grouped-query attention
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return fn(q, k, v, cu, cu, max_len, max_len, **kwargs)


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function contract: query [batch, heads, length, dim] -> ([batch, length, heads,
    dim], None), with the sequence boundaries in kwargs (cu_seq_lens_q, max_length_q)."""
    if dropout:
        raise ValueError("varlen attention is used without attention dropout")
    if kwargs.get("softcap") or (kwargs.get("sliding_window") or 1 << 62) < int(kwargs["max_length_q"]):
        # never silently inexact: worker/training/loss.py varlen_exact keeps such models off this kernel
        raise ValueError("varlen attention has no attention-logit soft-capping or sliding window narrower than a row")
    b, hq, s, d = query.shape
    q = query.transpose(1, 2).reshape(b * s, hq, d)
    k = key.transpose(1, 2).reshape(b * s, key.shape[1], d)
    v = value.transpose(1, 2).reshape(b * s, value.shape[1], d)
    out = _causal_varlen(q, k, v, kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"]), scaling)
    return out.view(b, s, hq, d), None


def register() -> None:
    """Make NAME an attention implementation transformers can dispatch to. It is deliberately absent from the
    mask interface: transformers then builds no mask for it."""
    from transformers import AttentionInterface

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, varlen_attention_forward)


def boundaries(position_ids: torch.Tensor) -> dict:
    """The packed rows' sequences as flash-attention kwargs: cumulative starts over the flattened rows (int32)
    and the longest sequence (bounded by the row length, which spares a device sync)."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).reshape(-1)
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    width = position_ids.shape[-1]
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": width, "max_length_k": width}


@contextlib.contextmanager
def attention_implementation(config, name: str):
    """The model's attention implementation switched to `name` for one forward (it is read at each call)."""
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous

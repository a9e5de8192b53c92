"""One autograd function for a LoRA linear layer, base matmul and adapter together, for the GPU path.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: besides the matmuls, every adapted layer
makes full passes over its [tokens, out] output for the scaling product and the sum (and a defensive copy
of it on 4-bit layers), and in backward again for the scaling and for adding the two input gradients. On
an H200 those element-wise passes were ~20 ms of a 147 ms bf16 LoRA step (1B shape, all-linear, r=8).

Here the scaling goes on the rank-r intermediate instead (tokens x 8 instead of tokens x 8,192), and each
sum is the accumulate of a matmul (`addmm_`): y = x W^T, then y += (s x A^T) B^T; in backward
dx = dy W, then dx += (s dy B) A. The same arithmetic as peft, without the extra passes. A 4-bit (QLoRA)
base weight is dequantized to the compute dtype in forward and again in backward, as bitsandbytes' own
matmul does, so its memory stays 4-bit between the two.

It takes over only what it computes exactly: one active vanilla LoRA adapter (no DoRA or other variant, no
LoRA bias), dropout 0, unmerged, no base bias, base an `nn.Linear` or a bitsandbytes `Linear4bit`. Anything
else goes to peft's own forward, per call.
"""

from __future__ import annotations

import types

import torch


def quant_state_of(base):
    """A 4-bit layer's quantization state, None for a dense one. The weight carries it, except where FSDP gathered the
    weight as a plain tensor (worker/training/sharding.py): then the module's copy, as bitsandbytes' own forward
    recovers it (`fix_4bit_weight_quant_state_from_module`)."""
    state = getattr(base.weight, "quant_state", None)
    return state if state is not None else getattr(base, "quant_state", None)


def dense_weight(base) -> torch.Tensor:
    """The base layer's [out, in] weight as a dense tensor (a 4-bit weight dequantized)."""
    quant_state = quant_state_of(base)
    if quant_state is None:
        return base.weight
    import bitsandbytes.functional as bnbf

    return bnbf.dequantize_4bit(base.weight.data, quant_state)


def base_dtype(base, dtype: torch.dtype) -> torch.dtype:
    """The dtype the base product runs in: a 4-bit layer's compute dtype (as bitsandbytes' own forward casts
    its input to it), else the input's. Under CUDA autocast both are bf16."""
    compute = getattr(base, "compute_dtype", None)
    return compute if quant_state_of(base) is not None and compute is not None else dtype


class LoraLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lora_a, lora_b, base, scaling: float):
        dtype = x.dtype
        x2 = x.reshape(-1, x.shape[-1])
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        h = (x2 @ a.t()).mul_(scaling)  # [tokens, r]: the scaling lands on the small intermediate
        cd = base_dtype(base, dtype)
        y = (x2.to(cd) @ dense_weight(base).to(cd).t()).to(dtype)
        y.addmm_(h, b.t())
        ctx.save_for_backward(x2, h, lora_a, lora_b)
        ctx.base, ctx.scaling, ctx.x_shape = base, scaling, x.shape
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        x2, h, lora_a, lora_b = ctx.saved_tensors
        dtype = dy.dtype
        dy2 = dy.reshape(-1, dy.shape[-1])
        a, b = lora_a.to(dtype), lora_b.to(dtype)
        dh = (dy2 @ b).mul_(ctx.scaling)  # [tokens, r]
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            cd = base_dtype(ctx.base, dtype)
            dx = (dy2.to(cd) @ dense_weight(ctx.base).to(cd)).to(dtype)
            dx.addmm_(dh, a)
            dx = dx.view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            da = (dh.t() @ x2.to(dtype)).to(lora_a.dtype)
        if ctx.needs_input_grad[2]:
            db = (dy2.t() @ h).to(lora_b.dtype)
        return dx, da, db, None, None


def _supported_base(base) -> bool:
    if getattr(base, "bias", None) is not None:
        return False
    if type(base) is torch.nn.Linear:
        return True
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return type(base) is bnb.nn.Linear4bit


def _fused_adapter(layer) -> str | None:
    """The one adapter this layer's call can be fused for, or None (then peft's forward runs)."""
    if layer.disable_adapters or layer.merged:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    name = active[0]
    if name in getattr(layer, "lora_variant", {}) or getattr(layer, "lora_bias", {}).get(name):
        return None
    if not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return None
    return name


def _fast_forward(self, x, *args, **kwargs):
    name = None if (args or kwargs) else _fused_adapter(self)
    if name is None:
        return self._ftaas_peft_forward(x, *args, **kwargs)
    return LoraLinearFunction.apply(
        x, self.lora_A[name].weight, self.lora_B[name].weight, self.get_base_layer(), float(self.scaling[name])
    )


def fuse_lora_layers(model) -> int:
    """Route every peft LoRA linear layer of `model` whose base this supports through LoraLinearFunction
    (per call, falling back to peft's forward for anything it does not compute); returns how many."""
    from peft.tuners.lora import LoraLayer

    n = 0
    for module in model.modules():
        if not isinstance(module, LoraLayer) or not hasattr(module, "lora_A"):
            continue
        if isinstance(module.lora_A, torch.nn.ModuleDict) and _supported_base(module.get_base_layer()):
            if not hasattr(module, "_ftaas_peft_forward"):
                module._ftaas_peft_forward = module.forward
                module.forward = types.MethodType(_fast_forward, module)
            n += 1
    return n

"""Liger Kernel's fused Triton kernels for the GPU path (RMSNorm, SwiGLU, RoPE, and the fused linear +
cross-entropy that never materialises the 128k-vocabulary logits of a whole batch).

Why a library rather than our own kernels: Liger is maintained against transformers' model code, covers
Llama, Mistral, Qwen, Gemma and more by model type, and is tested for exactness against the eager modules.
It is optional: without it (CPU hosts, the `gpu` extra not installed) the eager modules run.
"""

from __future__ import annotations

import logging

log = logging.getLogger("ftaas.kernels")


def liger_installed() -> bool:
    """Both Liger entry points ftaas calls are importable: the model patch here and the fused loss
    (worker/training/loss.py)."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy  # noqa: F401
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance  # noqa: F401
    except ImportError:
        return False
    return True


def apply_fused_kernels(model, *, fused_cross_entropy: bool) -> str | None:
    """Patch this model instance (before peft wraps it); returns what was applied, or None.

    fused_cross_entropy=False keeps the model's own loss: Liger's fused loss reads lm_head.weight directly,
    so a trained EOS row (peft trainable tokens on a tied head) would be left out of the loss. (Training
    mostly takes worker.training.loss's path instead, which calls the fused loss itself with the right weight.)
    """
    try:
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
    except ImportError:
        return None
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    from worker.training.kernels.one_row_rope import fold_rope_of

    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        fused_linear_cross_entropy=fused_cross_entropy,
    )
    # one compile of the RoPE kernel per model, not one per number of packed rows (one_row_rope.py says why)
    rope = "rope (one row)" if fold_rope_of(model, liger_rotary_pos_emb) else "rope"
    applied = f"liger: {rope}, rms_norm, swiglu" + (", fused linear cross-entropy" if fused_cross_entropy else "")
    log.info("%s on %s", applied, getattr(model.config, "model_type", "?"))
    return applied

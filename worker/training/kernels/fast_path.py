"""Does this install have what a GPU training step's fast path needs? `python -m worker.training.kernels.fast_path`

The worker image's build runs it (docker/worker.Dockerfile), so that an image whose PyTorch lacks variable-length
attention fails to build, instead of training packed rows through SDPA's masked kernel without a word (about 20%
of a LoRA step slower on an H200, DESIGN.md). Each check asks the module that decides it at run time. It needs
no GPU: it checks the software, not the card (scripts/gpu_smoke.py and bench/gpu_checks.py check the card).
"""

from __future__ import annotations

import sys


def checks() -> dict[str, str | None]:
    """Each part of the fast path -> None when present, else why not."""
    import torch

    from worker.training.kernels import varlen_attention
    from worker.training.kernels.fused import liger_installed

    return {
        "CUDA build of torch": None if torch.version.cuda else f"torch {torch.__version__} has no CUDA",
        "varlen attention (packed rows)": None
        if varlen_attention.supported()
        else f"torch {torch.__version__} lacks torch.nn.attention.varlen.varlen_attn (with is_causal or window_size)",
        "Liger Kernel (fused RMSNorm, SwiGLU, RoPE, linear + cross-entropy)": None
        if liger_installed()
        else "liger-kernel is not installed (the `gpu` extra)",
    }


def main() -> int:
    missing = 0
    for part, why_not in checks().items():
        print(f"{'ok  ' if why_not is None else 'MISSING'} {part}" + (f": {why_not}" if why_not else ""))
        missing += why_not is not None
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

"""Process set-up shared by the training and the comparison child."""

from __future__ import annotations

import os

from app.core.logs import adopt_parent_context, configure_logging
from app.core.settings import Settings

COMPILED = "compiled"  # under cache_dir: kernels compiled on this host, kept between jobs and worker restarts


def set_up_logging(settings: Settings, name: str) -> None:
    """The child's lines: text as "<time> <name> <LEVEL> <message>", or JSON naming the request and job its parent
    task logs under (app/core/logs.py)."""
    adopt_parent_context()
    configure_logging(settings.log_format, name, text=f"%(asctime)s {name} %(levelname)s %(message)s")


def prepare_process(settings: Settings) -> None:
    """Environment read when torch and the Hugging Face libraries load: call before importing them."""
    if settings.hf_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Packed micro-batches change shape every step; expandable segments keep the CUDA caching allocator from
    # fragmenting (and from synchronising on frees to make room).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    # Triton (Liger's kernels) compiles each kernel variant on its first use in a process and keeps the binaries on
    # disk, by default under ~/.triton: lost with a worker's container, so the first job of every fresh worker paid
    # the compiles inside its timed steps (54k against 72k tokens/s on an H200). Beside the worker's cache they
    # survive restarts (a volume in compose) and are shared by the host's workers; Triton writes them atomically.
    os.environ.setdefault("TRITON_CACHE_DIR", str(settings.cache_dir / COMPILED / "triton"))


def prepare_torch(settings: Settings) -> None:
    """CPU threads (several workers on one CPU host split its cores) and attention without per-shape plans."""
    import torch

    from worker.training.modeling import attention_without_per_shape_plans

    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    attention_without_per_shape_plans()

"""What a job's `auto` settings become on the machine that runs it: the adapter type (bf16 LoRA where the
model fits the GPU unquantized, the fast choice; QLoRA where it does not) and the micro-batch (the largest
that fits the GPU's memory, measured, not guessed). Only the worker knows its GPU, so the API leaves these
to it; the child writes the choices back into the job's spec and says why in an event."""

from __future__ import annotations

import math

import torch

GPU_BUDGET = 0.85  # share of the card a plan may fill; the rest absorbs fragmentation and evaluation
LORA_WEIGHTS_SHARE = 0.5  # bf16 weights may take up to half the card, leaving the rest for activations
MAX_ROWS = 256  # a micro-batch cap: beyond this, larger batches stop adding speed
CPU_MICRO_BATCH = 8  # no GPU memory to fit: the same default as batch_size auto


def choose_adapter_type(params: int, device: torch.device) -> tuple[str, str]:
    """("lora" | "qlora", why) for a model with `params` parameters on `device`."""
    if device.type != "cuda":
        return "lora", "no GPU: LoRA on the unquantized model"
    total = torch.cuda.get_device_properties(device).total_memory
    need = 2 * params  # bf16
    if need <= LORA_WEIGHTS_SHARE * total:
        return (
            "lora",
            f"bf16 weights ({need / 2**30:.1f} GiB) fit the GPU ({total / 2**30:.0f} GiB): LoRA, the fast choice",
        )
    return "qlora", (
        f"bf16 weights ({need / 2**30:.1f} GiB) would take over half the GPU ({total / 2**30:.0f} GiB): "
        "QLoRA (4-bit NF4 base)"
    )


def _probe_peak(model, rows: int, row_len: int, device: torch.device) -> int:
    """Peak memory of one forward and backward over `rows` full rows of `row_len` tokens."""
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(3, vocab, (rows, row_len), device=device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    peak = torch.cuda.max_memory_allocated(device)
    model.zero_grad(set_to_none=True)
    del out, ids
    torch.cuda.empty_cache()
    return peak


def choose_micro_batch(
    model, lengths: list[int], row_len: int, packing: bool, trainable: int, device: torch.device
) -> tuple[int, str]:
    """(examples per micro-batch, why). On a GPU: measure a step's peak memory at 1 and 2 rows, which gives
    the fixed cost (weights) and the cost per row (activations, logits); fill the budget with rows, leave
    room for AdamW's two fp32 moments per trainable parameter, and convert rows to examples (with packing,
    a row holds row_len / mean length examples)."""
    if device.type != "cuda":
        return min(CPU_MICRO_BATCH, len(lengths)), f"no GPU: {CPU_MICRO_BATCH} examples per micro-batch"
    total = torch.cuda.get_device_properties(device).total_memory
    one, two = _probe_peak(model, 1, row_len, device), _probe_peak(model, 2, row_len, device)
    per_row = max(1, two - one)
    fixed = one - per_row + 8 * trainable  # the measured step, plus the optimizer state it did not have
    rows = max(1, min(MAX_ROWS, int((GPU_BUDGET * total - fixed) // per_row)))
    mean_len = sum(lengths) / max(1, len(lengths))
    # 0.9: first-fit packing leaves a little room at the end of most rows
    per_row_examples = max(1.0, 0.9 * row_len / mean_len) if packing else 1.0
    micro = max(1, min(len(lengths), math.floor(rows * per_row_examples)))
    why = (
        f"measured {per_row / 2**20:.0f} MiB per {row_len}-token row over {fixed / 2**30:.1f} GiB fixed: "
        f"{rows} rows fit {GPU_BUDGET:.0%} of {total / 2**30:.0f} GiB"
        + (f", about {per_row_examples:.1f} examples each when packed" if packing else "")
        + f": {micro} examples per micro-batch"
    )
    return micro, why

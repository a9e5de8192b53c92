"""What a job's `auto` settings become on the machine that runs it: the adapter type (bf16 LoRA where the
model fits the GPU unquantized, the fast choice; QLoRA where it does not) and the micro-batch (the largest
that fits the GPU's memory, measured, not guessed). Only the worker knows its GPU, so the API leaves these
to it; the child writes the choices back into the job's spec and says why in an event."""

from __future__ import annotations

import math

import torch

from app.core.job_spec import JobSpec
from worker.training.loss import loss_fn_for
from worker.training.modeling import mixed_precision

GPU_BUDGET = 0.85  # share of the card a plan may fill; the rest absorbs fragmentation and evaluation
LORA_WEIGHTS_SHARE = 0.5  # bf16 weights may take up to half the card, leaving the rest for activations
# A micro-batch cap in 512-token rows. On an H200 (1B shape, LoRA) tokens/s rose from 70k at ~20 rows to 80k
# at ~72 rows and fell to 76k at ~190 rows, with twice the memory: past this, bigger only costs steps.
MAX_ROWS = 80
# The 1- and 2-row probe undercounts a row of real training (602 MiB probed against 678 MiB per row at 194
# rows on an H200: varying packed shapes fragment the allocator), so rows are costed this much higher.
ROW_MARGIN = 1.15
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


# Bytes per parameter a rank holds before any activation: bf16 weights; NF4 (4 bits, and the double-quantized scales);
# a full fine-tune's fp32 weights, gradients and two AdamW moments.
WEIGHT_BYTES = {"lora": 2.0, "qlora": 0.56, "full": 16.0}


def choose_strategy(
    params: int, adapter_type: str, device: torch.device, preference: bool, max_full_params: int | None = None
) -> tuple[str, str]:
    """("ddp" | "fsdp", why) for a job on several GPUs whose strategy is `auto`: the whole model on every GPU (ddp,
    the fastest) where it fits one of them with room for its activations, else sharded over them (fsdp). A full
    fine-tune past the deployment's cap for one GPU (max_full_params) is sharded: the cap grows with the GPUs."""
    if preference:
        return "ddp", "preference tuning's reference pass runs on whole models"
    if adapter_type == "prompt_tuning":
        return "ddp", "prompt tuning trains a few virtual tokens"
    if adapter_type == "full" and max_full_params is not None and params > max_full_params:
        return "fsdp", f"{params:,} parameters: over full fine-tuning's cap of {max_full_params:,} for one GPU"
    if device.type != "cuda":
        return "ddp", "no GPU: every rank holds the whole model"
    total = torch.cuda.get_device_properties(device).total_memory
    need = WEIGHT_BYTES[adapter_type] * params
    share = GPU_BUDGET if adapter_type == "full" else LORA_WEIGHTS_SHARE
    fits = need <= share * total
    return ("ddp" if fits else "fsdp"), (
        f"the model's {adapter_type} weights{' and optimizer' if adapter_type == 'full' else ''} "
        f"({need / 2**30:.1f} GiB) {'fit' if fits else 'do not fit'} {share:.0%} of one GPU ({total / 2**30:.0f} GiB)"
        + ("" if fits else ": sharded over the GPUs")
    )


def probe_step(model, rows: int, row_len: int, device: torch.device) -> None:
    """One training forward and backward over `rows` full rows of `row_len` random tokens, as training runs
    it (its loss path and precision); leaves no gradients behind."""
    vocab = model.config.vocab_size  # (the embedding may be wrapped: peft trainable tokens for the EOS row)
    ids = torch.randint(3, vocab, (rows, row_len), device=device)
    model.train()
    with mixed_precision(device):
        loss = loss_fn_for(model)(model, {"input_ids": ids, "labels": ids})
    loss.backward()
    model.zero_grad(set_to_none=True)


def _probe_peak(model, rows: int, row_len: int, device: torch.device) -> int:
    """Peak GPU memory of probe_step."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    probe_step(model, rows, row_len, device)
    peak = torch.cuda.max_memory_allocated(device)
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
    measured = max(1, two - one)
    per_row = int(ROW_MARGIN * measured)
    fixed = one - measured + 8 * trainable  # the measured step, plus the optimizer state it did not have
    rows = max(1, min(MAX_ROWS, int((GPU_BUDGET * total - fixed) // per_row)))
    mean_len = sum(lengths) / max(1, len(lengths))
    # 0.9: first-fit packing leaves a little room at the end of most rows
    per_row_examples = max(1.0, 0.9 * row_len / mean_len) if packing else 1.0
    micro = max(1, min(len(lengths), math.floor(rows * per_row_examples)))
    why = (
        f"measured {measured / 2**20:.0f} MiB per {row_len}-token row (costed at {per_row / 2**20:.0f}) over "
        f"{fixed / 2**30:.1f} GiB fixed: "
        f"{rows} rows fit {GPU_BUDGET:.0%} of {total / 2**30:.0f} GiB"
        + (f", about {per_row_examples:.1f} examples each when packed" if packing else "")
        + f": {micro} examples per micro-batch"
    )
    return micro, why


def with_micro_batch(spec: JobSpec | dict, micro: int) -> JobSpec:
    """The spec with a concrete micro-batch; batch_size auto then means one micro-batch per optimizer step."""
    spec = JobSpec.of(spec)
    hp = spec.hyperparameters
    return spec.model_copy(
        update={
            "training": spec.training.model_copy(update={"micro_batch_size": micro}),
            "hyperparameters": hp.model_copy(
                update={"batch_size": micro if hp.batch_size == "auto" else hp.batch_size}
            ),
        }
    )

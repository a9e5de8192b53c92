"""Loading a base model safely and wrapping it for one of the methods: small pure builders, one path.

LoRA, QLoRA and prompt tuning wrap the frozen base in a peft model; full fine-tuning trains the plain
transformers model itself, every weight.

Weights load from safetensors only and never with remote code: a model directory or hub repo that holds
only pickle weights (.bin/.pt) or asks for custom code is refused before anything is deserialised.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from app.core.job_spec import AdapterSpec


class ModelRefused(Exception):
    """A base model that ftaas will not load (unsafe format, remote code, too large for full fine-tuning)."""

    def __init__(self, message: str, code: str = "model_refused") -> None:
        super().__init__(message)
        self.code = code


def is_peft(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def pick_device() -> torch.device:
    """This process's GPU (the one its rank was given: join_from_environment sets it), or the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def train_dtype(device: torch.device, adapter_type: str = "lora") -> torch.dtype:
    # bf16 where the hardware does it natively; fp32 on CPUs, where bf16 matmuls are slow and lossy.
    # Full fine-tuning keeps fp32 on GPUs too: AdamW updates the weights themselves, and a step of
    # lr 2e-5 is far below bf16's resolution (8 mantissa bits, ~0.4% of the weight), so most updates would
    # round away. Adapters do not need this: their small trained tensors are separate from the bf16 base.
    if adapter_type != "full" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def mixed_precision(device: torch.device):
    """bf16 autocast on GPUs. peft keeps adapter weights in fp32 (good master weights for AdamW) and a full
    fine-tune is fp32 too; without autocast their matmuls run in fp32, off the tensor cores (measured on an
    H200: the fp32 LoRA path took 137 of 305 ms of a bf16 LoRA step). Under autocast they run in bf16 while
    the weights and optimizer stay fp32. CPUs train in fp32 and need none of this."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _asks_for_remote_code(path: Path) -> str | None:
    """The name of a config file in `path` that maps a class to custom code (auto_map), or None."""
    for name in ("config.json", "tokenizer_config.json", "adapter_config.json", "processor_config.json"):
        file = path / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ModelRefused(f"{path.name}/{name} is not valid JSON: {exc}") from exc
        if isinstance(data, dict) and data.get("auto_map"):
            return name
    return None


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def check_model_source(source: str, need_weights: bool = True) -> None:
    """Refuse local model directories without safetensors weights or with custom code, before anything in
    them is read by transformers (the tokenizer and the config included): pickle weights are never
    unpickled, remote code never imported.

    need_weights=False (reading only a tokenizer): a directory with no weights at all passes; one whose
    only weights are pickles is still refused, so a pickle-only model fails at its first read.
    """
    path = Path(source)
    if not path.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True, trust_remote_code=False) enforces the same
    if not any(path.glob("*.safetensors")):
        has_pickles = any(any(path.glob(pattern)) for pattern in PICKLE_WEIGHTS)
        if need_weights or has_pickles:
            raise ModelRefused(f"model directory {path.name} has no .safetensors weights (pickle weights are refused)")
    asking = _asks_for_remote_code(path)
    if asking:
        raise ModelRefused(f"model {path.name} asks for remote code (auto_map in {asking}); refused")


def check_adapter_source(folder: Path) -> None:
    """The same for a stored adapter directory: adapter_model.safetensors, no custom code."""
    if not (folder / "adapter_model.safetensors").is_file():
        raise ModelRefused(
            f"adapter directory {folder.name} has no adapter_model.safetensors (pickle weights are refused)"
        )
    asking = _asks_for_remote_code(folder)
    if asking:
        raise ModelRefused(f"adapter {folder.name} asks for remote code (auto_map in {asking}); refused")


def count_params_of_config(source: str) -> int:
    """Parameters of a model, from its config alone: built on the meta device, so no weight is read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    check_model_source(source)
    config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return sum(p.numel() for p in model.parameters())  # parameters() counts tied embeddings once


def check_full_size(source: str, max_params: int) -> None:
    """Full fine-tuning holds fp32 weights, gradients and two AdamW moments: refuse large models before loading."""
    n = count_params_of_config(source)
    if n > max_params:
        raise ModelRefused(
            f"full fine-tuning is limited to {max_params:,} parameters and {Path(source).name} has {n:,}; "
            "use lora or qlora",
            code="model_too_large_for_full",
        )


def adapter_spec(adapter: AdapterSpec | dict) -> AdapterSpec:
    """The job spec's adapter settings; a plain dict (scripts, tests) is validated into the same model."""
    return adapter if isinstance(adapter, AdapterSpec) else AdapterSpec.model_validate(adapter)


def build_quantization_config(adapter: AdapterSpec | dict, sharded: bool = False):
    """QLoRA: 4-bit NF4 with double quantization; matmuls in compute_dtype (bf16 by default).

    sharded: the model will be sharded with FSDP (worker/training/sharding.py), which shards floating-point tensors
    only (torch 2.11 refuses a uint8 one): the packed 4-bit values are stored as compute_dtype elements instead, as
    bitsandbytes documents for FSDP (`bnb_4bit_quant_storage`); the same bits, read the same way."""
    adapter = adapter_spec(adapter)
    if adapter.type != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, adapter.compute_dtype),
        **({"bnb_4bit_quant_storage": getattr(torch, adapter.compute_dtype)} if sharded else {}),
    )


def build_peft_config(adapter: AdapterSpec | dict, tokenizer_name: str | None = None, eos_token_id: int | None = None):
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    adapter = adapter_spec(adapter)
    if adapter.type in ("lora", "qlora"):
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=adapter.r,
            lora_alpha=adapter.alpha,
            lora_dropout=adapter.dropout,
            target_modules=adapter.target_modules,
            bias="none",
            # Base models often never trained their EOS row (llama2.c's stories models, many pretrain-only
            # checkpoints): LoRA on the linear layers alone then cannot learn to stop. peft's trainable
            # tokens train just that row, tied output head included.
            trainable_token_indices=[eos_token_id] if adapter.train_eos_token and eos_token_id is not None else None,
        )
    if adapter.type == "prompt_tuning":
        init_text = adapter.prompt_tuning_init_text
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=adapter.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if init_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=init_text,
            tokenizer_name_or_path=tokenizer_name if init_text else None,
        )
    raise ValueError(f"unknown adapter type {adapter.type}")


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    check_model_source(source, need_weights=False)  # the tokenizer is the first thing read from a model directory
    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_base_model(
    source: str,
    adapter: AdapterSpec | dict,
    device: torch.device,
    max_full_params: int | None = None,
    place: torch.device | None = None,
    sharded: bool = False,
):
    """The frozen base model for training on `device`, 4-bit quantized for QLoRA (wrap_for_training unfreezes it for
    full); read onto `place` instead where given (a model to shard is read into host memory first).

    max_full_params: for a full fine-tuning job, refuse (ModelRefused) models with more parameters.
    sharded: it will be sharded with FSDP (see build_quantization_config).
    """
    from transformers import AutoModelForCausalLM

    adapter = adapter_spec(adapter)
    check_model_source(source)
    if adapter.type == "full" and max_full_params is not None:
        check_full_size(source, max_full_params)
    quant = build_quantization_config(adapter, sharded)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=train_dtype(device, adapter.type) if quant is None else getattr(torch, adapter.compute_dtype),
        quantization_config=quant,
        device_map={"": _device_map_target(place or device)},
        use_safetensors=True,
        trust_remote_code=False,
    )
    model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad_(False)
    if quant is not None:
        plain_4bit_kernels_on_cpu(model, place or device)
    return model


def _device_map_target(device: torch.device) -> int | str:
    return device.index if device.type == "cuda" and device.index is not None else str(device)


def plain_4bit_kernels_on_cpu(model, device) -> None:
    """bitsandbytes repacks 4-bit weights for its AVX512-BF16 CPU kernel on the first inference call, which
    asserts that every layer's output size is a multiple of 32 (false for small models, e.g. an MLP width of
    172). On a CPU, use its plain kernel instead; GPUs never take that path."""
    if device.type != "cpu":
        return
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def attention_without_per_shape_plans() -> None:
    """Keep scaled-dot-product attention off its cuDNN backend, in this process.

    cuDNN builds an execution plan the first time it sees each (batch, length) shape, about 2 s forward and
    backward on an H200; packed and padded batches change shape nearly every step, so the first epoch of every
    job (each job is a fresh process) paid seconds on most steps. PyTorch's own flash and memory-efficient
    kernels need no plan; warm, they were 5% slower on the 1B LoRA step (bench/RESULTS-2026-11-23.md)."""
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


def fused_kernels_enabled() -> bool:
    from app.core.settings import get_settings

    return get_settings().fused_kernels


def wrap_for_training(
    model,
    adapter: AdapterSpec | dict,
    tokenizer_source: str,
    gradient_checkpointing: bool,
    eos_token_id: int | None = None,
    on_gpu: bool | None = None,
):
    """The model the training loop optimizes: a peft model around the frozen base, or for full fine-tuning
    the plain model with every weight trainable. on_gpu: it trains on a GPU (by default: it is on one now; a model
    read into host memory to be sharded onto the GPUs is not yet)."""
    adapter = adapter_spec(adapter)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if on_gpu is None:
        on_gpu = next(model.parameters()).device.type == "cuda"
    if on_gpu and fused_kernels_enabled():
        from worker.training.kernels.fused import apply_fused_kernels

        trains_eos_row = adapter.type in ("lora", "qlora") and adapter.train_eos_token
        apply_fused_kernels(model, fused_cross_entropy=not trains_eos_row)
    if adapter.type == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import get_peft_model

    if gradient_checkpointing:
        # The frozen embeddings' output has no grad: checkpointed blocks would then get no gradient at all.
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, build_peft_config(adapter, tokenizer_source, eos_token_id))
    if on_gpu:
        # Every forward on a GPU runs under mixed_precision(): leave the bf16 activations as they are instead
        # of copying them to the adapters' fp32 before each LoRA matmul (autocast casts the small weights).
        for module in peft_model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
        if fused_kernels_enabled():
            from worker.training.kernels.fast_lora import fuse_lora_layers

            fuse_lora_layers(peft_model)  # base matmul and adapter in one autograd function: fewer passes
    return peft_model


def count_params(model) -> tuple[int, int]:
    """(trainable, total). peft's count also counts 4-bit weights at their real size (two per byte)."""
    if is_peft(model):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    params = list(model.parameters())  # tied embeddings appear once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA's allocated peak on a GPU, else the peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux

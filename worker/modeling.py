"""Loading a base model safely and wrapping it for one of the three methods: small pure builders, one path.

Weights load from safetensors only and never with remote code: a model directory or hub repo that holds
only pickle weights (.bin/.pt) or asks for custom code is refused before anything is deserialised.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


class ModelRefused(Exception):
    """A base model that ftaas will not load (unsafe format or remote code)."""


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def train_dtype(device: torch.device) -> torch.dtype:
    # bf16 where the hardware does it natively; fp32 on CPUs, where bf16 matmuls are slow and lossy.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_model_source(source: str) -> None:
    """Refuse local model directories without safetensors weights or with custom code."""
    path = Path(source)
    if not path.is_dir():
        return  # a hub id: from_pretrained(use_safetensors=True, trust_remote_code=False) enforces the same
    if not any(path.glob("*.safetensors")):
        raise ModelRefused(f"model directory {path.name} has no .safetensors weights (pickle weights are refused)")
    config = path / "config.json"
    if config.is_file():
        data = json.loads(config.read_text())
        if data.get("auto_map"):
            raise ModelRefused(f"model {path.name} asks for remote code (auto_map); refused")


def build_quantization_config(adapter: dict):
    """QLoRA: 4-bit NF4 with double quantization; matmuls in compute_dtype (bf16 by default)."""
    if adapter["type"] != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, adapter["compute_dtype"]),
    )


def build_peft_config(adapter: dict, tokenizer_name: str | None = None, eos_token_id: int | None = None):
    from peft import LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    if adapter["type"] in ("lora", "qlora"):
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=adapter["r"],
            lora_alpha=adapter["alpha"],
            lora_dropout=adapter["dropout"],
            target_modules=adapter["target_modules"],
            bias="none",
            # Base models often never trained their EOS row (llama2.c's stories models, many pretrain-only
            # checkpoints): LoRA on the linear layers alone then cannot learn to stop. peft's trainable
            # tokens train just that row, tied output head included.
            trainable_token_indices=[eos_token_id]
            if adapter.get("train_eos_token", True) and eos_token_id is not None
            else None,
        )
    if adapter["type"] == "prompt_tuning":
        init_text = adapter.get("prompt_tuning_init_text")
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=adapter["num_virtual_tokens"],
            prompt_tuning_init=PromptTuningInit.TEXT if init_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=init_text,
            tokenizer_name_or_path=tokenizer_name if init_text else None,
        )
    raise ValueError(f"unknown adapter type {adapter['type']}")


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def load_base_model(source: str, adapter: dict, device: torch.device):
    """The frozen base model on `device`, 4-bit quantized for QLoRA."""
    from transformers import AutoModelForCausalLM

    check_model_source(source)
    quant = build_quantization_config(adapter)
    model = AutoModelForCausalLM.from_pretrained(
        source,
        dtype=train_dtype(device) if quant is None else getattr(torch, adapter["compute_dtype"]),
        quantization_config=quant,
        device_map={"": device.index if device.type == "cuda" and device.index is not None else str(device)},
        use_safetensors=True,
        trust_remote_code=False,
    )
    model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def wrap_for_training(
    model, adapter: dict, tokenizer_source: str, gradient_checkpointing: bool, eos_token_id: int | None = None
):
    from peft import get_peft_model

    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return get_peft_model(model, build_peft_config(adapter, tokenizer_source, eos_token_id))


def count_params(model) -> tuple[int, int]:
    trainable, total = model.get_nb_trainable_parameters()
    return int(trainable), int(total)

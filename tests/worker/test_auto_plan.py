"""The arithmetic of `auto` on a GPU, with the card's size and the measured step peaks stood in for (this
machine has no GPU; the measuring itself runs in bench/ and the GPU service script)."""

from __future__ import annotations

import types

import pytest
import torch

from worker.training import auto_plan

GIB = 2**30
CUDA = torch.device("cuda")


@pytest.fixture
def card(monkeypatch):
    def set_total(gib: float):
        props = types.SimpleNamespace(total_memory=int(gib * GIB))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: props)

    return set_total


def test_adapter_auto_is_bf16_lora_when_the_model_fits_and_qlora_when_not(card):
    card(139)
    assert auto_plan.choose_adapter_type(1_235_814_400, CUDA)[0] == "lora"  # Llama-3.2-1B: 2.3 GiB in bf16
    assert auto_plan.choose_adapter_type(8_030_261_248, CUDA)[0] == "lora"  # Llama-3.1-8B: 15 GiB
    kind, why = auto_plan.choose_adapter_type(70_553_706_496, CUDA)  # Llama-3.1-70B: 131 GiB
    assert kind == "qlora" and "QLoRA" in why
    card(24)
    assert auto_plan.choose_adapter_type(8_030_261_248, CUDA)[0] == "qlora"  # 15 GiB > half of 24
    assert auto_plan.choose_adapter_type(10**9, torch.device("cpu"))[0] == "lora"


def test_strategy_auto_shards_only_what_does_not_fit_one_gpu(card):
    card(139)
    assert auto_plan.choose_strategy(8_030_261_248, "lora", CUDA, False)[0] == "ddp"  # 15 GiB of bf16 weights
    strategy, why = auto_plan.choose_strategy(70_553_706_496, "lora", CUDA, False)  # 131 GiB
    assert strategy == "fsdp" and "do not fit" in why and "131.4 GiB" in why
    assert auto_plan.choose_strategy(70_553_706_496, "qlora", CUDA, False)[0] == "ddp"  # 37 GiB in NF4
    assert auto_plan.choose_strategy(3_212_749_824, "full", CUDA, False)[0] == "ddp"  # 3B: 48 GiB with AdamW
    assert auto_plan.choose_strategy(8_030_261_248, "full", CUDA, False)[0] == "fsdp"  # 120 GiB
    card(80)
    assert auto_plan.choose_strategy(70_553_706_496, "qlora", CUDA, False)[0] == "ddp"  # 37 of 80 GiB: under half
    card(24)
    assert auto_plan.choose_strategy(70_553_706_496, "qlora", CUDA, False)[0] == "fsdp"
    # never sharded: preference tuning's reference pass, prompt tuning, CPUs
    assert auto_plan.choose_strategy(70_553_706_496, "lora", CUDA, True)[0] == "ddp"
    assert auto_plan.choose_strategy(70_553_706_496, "prompt_tuning", CUDA, False)[0] == "ddp"
    assert auto_plan.choose_strategy(70_553_706_496, "lora", torch.device("cpu"), False)[0] == "ddp"
    # a full fine-tune past the cap for one GPU is sharded, CPUs included (the cap grows with the ranks)
    strategy, why = auto_plan.choose_strategy(8_030_261_248, "full", torch.device("cpu"), False, 3_500_000_000)
    assert strategy == "fsdp" and "cap of 3,500,000,000" in why


def test_micro_batch_fills_the_budget_from_two_measured_steps(card, monkeypatch):
    card(100)
    peaks = {1: 10 * GIB, 2: 11 * GIB}  # weights ~9 GiB, 1 GiB per 512-token row
    monkeypatch.setattr(auto_plan, "_probe_peak", lambda model, rows, row_len, device: peaks[rows])
    lengths = [128] * 10_000
    micro, why = auto_plan.choose_micro_batch(None, lengths, 512, False, trainable=0, device=CUDA)
    assert micro == 66  # (85 GiB budget - 9 GiB fixed) / (1 GiB per row + 15% margin), one example a row
    packed, _ = auto_plan.choose_micro_batch(None, lengths, 512, True, trainable=0, device=CUDA)
    assert packed == int(66 * 0.9 * 4)  # four 128-token examples per row, less 10% packing slack
    # a full fine-tune's optimizer state (8 bytes per trainable parameter) comes out of the budget first
    full, _ = auto_plan.choose_micro_batch(None, lengths, 512, False, trainable=2 * GIB, device=CUDA)
    assert full == 52  # (85 - 9 - 16) / 1.15
    assert auto_plan.choose_micro_batch(None, [128] * 5, 512, True, 0, CUDA)[0] == 5  # never more than the data
    assert "66 rows fit" in why
    card(400)  # room for far more rows than help: capped
    assert auto_plan.choose_micro_batch(None, lengths, 512, False, 0, CUDA)[0] == auto_plan.MAX_ROWS
    assert auto_plan.choose_micro_batch(None, lengths, 512, True, 0, torch.device("cpu"))[0] == 8


def test_the_probe_step_runs_the_training_loss_on_a_model_with_a_trained_eos_row():
    # The probe once read the embedding's num_embeddings, which peft's trainable-token wrapper (the trained
    # EOS row, on by default) does not have: every `auto` micro-batch on a GPU failed. The step itself is
    # device-agnostic; only its peak-memory reading needs CUDA.
    from tests.helpers.training import SRC, adapter
    from worker.training.modeling import load_base_model, wrap_for_training

    ad = adapter("lora", train_eos_token=True)
    model = wrap_for_training(load_base_model(SRC, ad, torch.device("cpu")), ad, SRC, False, 2)
    auto_plan.probe_step(model, 2, 64, torch.device("cpu"))
    assert all(p.grad is None for p in model.parameters())  # nothing left behind for the real first step

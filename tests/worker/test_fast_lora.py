"""worker.training.kernels.fast_lora on the tiny real Llama: the fused LoRA linear gives peft's outputs and
gradients, for a bf16/fp32 base and a 4-bit (QLoRA) base, and leaves to peft what it does not compute."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.training import CPU, sql_examples, trained
from tests.helpers.training import loss_and_grads as _loss_and_grads
from worker.training.kernels.fast_lora import LoraLinearFunction, fuse_lora_layers
from worker.training.loss import completion_loss
from worker.training.packing import collate_packed


@pytest.fixture(scope="module")
def batch(tok):
    b = collate_packed(sql_examples(tok, 8), 256, tok.pad_token_id, CPU)
    b.pop("num_tokens")
    return b


def loss_and_grads(model, batch):
    return _loss_and_grads(model, completion_loss, batch)


def count_calls(monkeypatch) -> list[int]:
    calls = [0]
    apply = LoraLinearFunction.apply

    def counting(*a):
        calls[0] += 1
        return apply(*a)

    monkeypatch.setattr(LoraLinearFunction, "apply", counting)
    return calls


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_fused_lora_matches_peft_outputs_and_gradients(kind, tok, batch, monkeypatch):
    model = trained(kind, tok)
    peft_loss, peft_grads = loss_and_grads(model, batch)
    adapted = 7 * model.get_base_model().config.num_hidden_layers  # q, k, v, o, gate, up, down per block
    assert fuse_lora_layers(model) == adapted
    calls = count_calls(monkeypatch)
    loss, grads = loss_and_grads(model, batch)
    assert calls[0] == adapted  # the fused function did the work
    # A 4-bit model's activations are bf16 (its compute dtype). Without autocast (CPU), peft runs the adapter
    # in fp32 and rounds its output to bf16; the fused function runs it in the activations' dtype, as both
    # do under CUDA autocast. So: exact for the fp32 model, within bf16 rounding for the 4-bit one.
    loss_tol, grad_tol = (1e-5, 1e-3) if kind == "lora" else (2e-3, 0.1)  # measured: 1.4e-4 and 0.06
    assert loss == pytest.approx(peft_loss, rel=loss_tol)
    for name, g in peft_grads.items():
        assert (grads[name] - g).abs().max().item() <= grad_tol * g.abs().max().item(), name


def test_what_it_does_not_compute_goes_to_peft(tok, batch, monkeypatch):
    with_dropout = trained("lora", tok, dropout=0.1)
    fuse_lora_layers(with_dropout)
    calls = count_calls(monkeypatch)
    completion_loss(with_dropout, batch).backward()
    assert calls[0] == 0  # dropout on the adapter's input: peft's forward

    model = trained("lora", tok)
    fuse_lora_layers(model)
    with torch.no_grad():
        fused = model(**batch).logits
        with model.disable_adapter():  # the base model alone, e.g. base-model evaluation
            base = model(**batch).logits
    assert calls[0] == 7 * model.get_base_model().config.num_hidden_layers  # the adapted forward only
    assert not torch.allclose(fused, base)

"""worker.training.loss on the tiny real Llama: the loss on the labelled positions only (decoder, then the head on
those rows) equals the model's own loss, with the same gradient for every trained weight, the trained EOS
row of a tied head included; models it cannot split take their own forward."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.training import CPU, loss_and_grads, sql_examples, trained
from worker.training.data import IGNORE, Example
from worker.training.loss import completion_loss, head_weight, loss_fn_for, model_loss
from worker.training.packing import collate, collate_packed


@pytest.fixture(scope="module")
def examples(tok):
    return sql_examples(tok, 8)


@pytest.mark.parametrize("kind", ["lora", "qlora", "full"])
@pytest.mark.parametrize("packed", [True, False])
def test_completion_loss_equals_the_models_own_loss_and_gradients(kind, packed, tok, examples):
    model = trained(kind, tok)
    assert loss_fn_for(model) is completion_loss
    if packed:
        batch = collate_packed(examples, 256, tok.pad_token_id, CPU)
        batch.pop("num_tokens")
    else:
        batch = collate(examples, tok.pad_token_id, CPU)
    own, own_grads = loss_and_grads(model, model_loss, batch)
    ours, our_grads = loss_and_grads(model, completion_loss, batch)
    assert ours == pytest.approx(own, rel=1e-5)
    assert own_grads.keys() == our_grads.keys()
    for name, g in own_grads.items():
        assert torch.allclose(our_grads[name], g, rtol=1e-4, atol=1e-6 * g.abs().max().item()), name
    if kind != "full":  # the EOS row of the tied embedding/head is trained, and gets its gradient
        eos = [n for n in our_grads if "trainable_tokens_delta" in n]
        assert eos and all(our_grads[n].abs().sum() > 0 for n in eos)


def test_head_weight_is_the_base_matrix_with_the_trained_eos_row(tok):
    model = trained("lora", tok)
    base = model.get_base_model()
    w = head_weight(base.get_output_embeddings())
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    assert torch.equal(w[tok.eos_token_id], delta.reshape(-1).to(w.dtype))
    others = torch.arange(w.shape[0]) != tok.eos_token_id
    assert torch.equal(w[others], base.get_input_embeddings().token_adapter.base_layer.weight[others])
    assert w.requires_grad  # the row's gradient flows back through it


def test_models_it_cannot_split_take_their_own_forward(tok):
    assert loss_fn_for(trained("prompt_tuning", tok)) is model_loss  # virtual tokens go in inside peft
    with_head_lora = trained("lora", tok, target_modules=["q_proj", "v_proj", "lm_head"], train_eos_token=False)
    assert loss_fn_for(with_head_lora) is model_loss


def test_a_micro_batch_without_labels_gives_zero_with_a_graph(tok, examples):
    model = trained("lora", tok)
    unlabelled = [Example(e.input_ids, [IGNORE] * len(e.labels)) for e in examples[:2]]
    loss = completion_loss(model, collate(unlabelled, tok.pad_token_id, CPU))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()  # accumulation with other micro-batches must not fail


def tiny_gemma2():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        final_logit_softcapping=0.2,  # low for random weights (logits ~0.2), so that the capping changes the loss
        attn_logit_softcapping=50.0,
        sliding_window=4096,
        attn_implementation="eager",
    )
    return Gemma2ForCausalLM(config)


def test_gemma2_trains_on_the_split_path_with_its_logit_softcapping(tok, examples):
    from worker.training.loss import logit_softcap, varlen_exact

    model = tiny_gemma2()
    assert loss_fn_for(model) is completion_loss and logit_softcap(model) == 0.2
    batch = collate(examples, tok.pad_token_id, CPU)
    own, own_grads = loss_and_grads(model, model_loss, batch)
    ours, our_grads = loss_and_grads(model, completion_loss, batch)
    assert ours == pytest.approx(own, rel=1e-5)
    for name, g in own_grads.items():
        assert torch.allclose(our_grads[name], g, rtol=1e-4, atol=1e-6 * g.abs().max().item()), name
    model.config.final_logit_softcapping = None  # the capping is what made the two agree, not chance
    uncapped, _ = loss_and_grads(model, completion_loss, batch)
    assert abs(uncapped - own) > 1e-3
    # its attention soft-capping keeps packed rows off the plain varlen kernel (the model's own attention instead)
    assert not varlen_exact(model.config, 512)
    assert varlen_exact(trained("lora", tok).get_base_model().config, 512)

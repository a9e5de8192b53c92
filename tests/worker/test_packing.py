"""Sequence packing on the tiny real Llama: the same loss as unpacked training on the same examples, no
example attending to another in a packed row, loss still on completion tokens only, and the same weights
after training."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.training import CPU, SRC, adapter, config, hooks, sql_examples
from worker.training.data import IGNORE, Example, Formatter
from worker.training.loop import train
from worker.training.modeling import load_base_model, wrap_for_training
from worker.training.packing import collate, collate_packed, pack

ROW = 256


@pytest.fixture(scope="module")
def examples(tok):
    return sql_examples(tok, 16)


def lora_model(tok):
    torch.manual_seed(0)
    model = load_base_model(SRC, adapter("lora"), CPU)
    model = wrap_for_training(model, adapter("lora"), SRC, False, tok.eos_token_id)
    # lora_B starts at zero; give it values so the adapter takes part in the comparison
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return model


def test_pack_fills_rows_without_overflow_or_loss(examples):
    rows = pack(examples, ROW)
    assert sorted(id(e) for row in rows for e in row) == sorted(id(e) for e in examples)
    assert all(sum(len(e.input_ids) for e in row) <= ROW for row in rows)
    assert len(pack(examples, 4 * ROW)) < len(examples) / 2  # short examples share rows
    batch = collate_packed(examples, ROW, 0, CPU)
    assert int(batch["num_tokens"]) == sum(len(e.input_ids) for e in examples)
    assert "attention_mask" not in batch  # the block-diagonal mask comes from the position ids


def test_packed_loss_equals_unpacked_loss(tok, examples):
    model = lora_model(tok).eval()
    with torch.no_grad():
        padded = model(**collate(examples, tok.pad_token_id, CPU)).loss
        packed_batch = collate_packed(examples, ROW, tok.pad_token_id, CPU)
        packed_batch.pop("num_tokens")
        packed = model(**packed_batch).loss
    assert packed.item() == pytest.approx(padded.item(), rel=1e-5)


def test_no_example_attends_to_another_in_a_packed_row(tok, examples):
    model = lora_model(tok).eval()
    a, b = examples[0], examples[1]
    other = Example([a.input_ids[0]] + [(t * 7 + 3) % 500 + 3 for t in a.input_ids[1:]], a.labels)

    def logits_of_b(first: Example) -> torch.Tensor:
        batch = collate_packed([first, b], 4 * ROW, tok.pad_token_id, CPU)  # one row holds both
        assert batch["input_ids"].shape[0] == 1
        batch.pop("num_tokens")
        start = len(first.input_ids) if len(first.input_ids) >= len(b.input_ids) else 0
        with torch.no_grad():
            out = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        return out[start : start + len(b.input_ids)]

    alone = model(input_ids=torch.tensor([b.input_ids])).logits[0].detach()
    with_a, with_other = logits_of_b(a), logits_of_b(other)
    assert torch.allclose(with_a, alone, atol=1e-5)  # b's positions restart at 0 and it sees only itself
    assert torch.allclose(with_a, with_other, atol=1e-6)  # changing its neighbour changes nothing


def test_packed_labels_are_the_completions_only(tok):
    fmt = Formatter(tok, ROW)
    rows = [
        {"prompt": "Q: two plus two?\nA: ", "completion": "four"},
        {"prompt": "Q: the capital of France?\nA: ", "completion": "Paris"},
    ]
    exs = [fmt.example(r) for r in rows]
    batch = collate_packed(exs, ROW, tok.pad_token_id, CPU)
    trained = [t for t, lab in zip(batch["input_ids"][0].tolist(), batch["labels"][0].tolist()) if lab != IGNORE]
    expected = [t for e in exs for t, lab in zip(e.input_ids, e.labels) if lab != IGNORE]
    assert sorted(trained) == sorted(expected)  # the same completion tokens (plus EOS), nothing of the prompts
    text = tok.decode(trained, skip_special_tokens=True)
    assert "Q:" not in text and {"four", "Paris"} <= set(text.split())


def test_training_packed_follows_the_same_losses_to_the_same_weights(tok, examples, tmp_path):
    def run(pack_length):
        torch.manual_seed(0)
        model = wrap_for_training(load_base_model(SRC, adapter("lora"), CPU), adapter("lora"), SRC, False, 2)
        log: list[dict] = []
        ckpt = tmp_path / f"ck-{pack_length}"
        summary = train(model, examples, config(pack_length=pack_length), tok.pad_token_id, CPU, ckpt, hooks(log))
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return weights, [d["train_loss"] for d in log], summary

    padded, pad_losses, s_pad = run(None)
    packed, pack_losses, s_pack = run(ROW)
    assert s_pad.trained_tokens == s_pack.trained_tokens  # real tokens, padding not counted
    assert len(pad_losses) == 4 and pack_losses == pytest.approx(pad_losses, rel=1e-5)  # every step's loss
    # Adam divides by the gradients' size, which magnifies float rounding a little: 1e-4 of weights near 1
    for name in padded:
        assert torch.allclose(padded[name], packed[name], atol=1e-4), name

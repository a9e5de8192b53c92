"""Preference tuning (DPO) on the tiny real Llama: the loss is TRL's, computed by TRL itself on the same batch; the
sequence log-probabilities agree however they are batched; the reference is the base with the adapter disabled,
measured once and read back; and training on WikiSQL pairs makes held-out pairs preferred the right way."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DATASETS
from tests.helpers.preference_rows import trl_preference_rows
from tests.helpers.training import CPU, SRC, adapter, config, hooks, trained
from worker.training.data import IGNORE, Example, Formatter
from worker.training.loop import train
from worker.training.modeling import load_base_model, wrap_for_training
from worker.training.preference import (
    REFERENCE_FILE,
    Pair,
    PreferenceObjective,
    attach_reference,
    dpo_loss,
    measure_logps,
    model_forward_logps,
    preference_rows,
    sequence_logps,
)

TRAIN = DATASETS / "wikisql" / "train.jsonl"
VALID = DATASETS / "wikisql" / "valid.jsonl"


def pairs_of(tok, path, n: int, max_len: int = 256) -> list[Pair]:
    fmt = Formatter(tok, max_len)
    return [Pair(*fmt.pair(r)) for r in trl_preference_rows(path, n)]


def test_dpo_loss_equals_trls_sigmoid_loss_on_the_same_batch(tok, tmp_path):
    """TRL's DPOTrainer tokenizes and collates the pairs and computes its loss (policy and a reference model); ftaas'
    sequence log-probabilities and sigmoid loss on the very same token ids give the same number, and the same reward
    margin TRL logs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    policy = AutoModelForCausalLM.from_pretrained(SRC)
    reference = AutoModelForCausalLM.from_pretrained(SRC)
    torch.manual_seed(0)
    with torch.no_grad():  # a policy that differs from its reference, so the loss is not log 2
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    beta = 0.3
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        per_device_train_batch_size=4,
        max_length=512,
        report_to=[],
        use_cpu=True,
        bf16=False,  # fp32 on both sides: the comparison is of the formula, not of two roundings
    )
    rows = trl_preference_rows(TRAIN, 8)
    trainer = DPOTrainer(
        model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok
    )
    batch = next(iter(trainer.get_train_dataloader()))  # [chosen..., rejected...], right-padded
    trainer.model.train()  # TRL logs its metrics under "train" then (no dropout in this model)
    trl_loss = trainer.compute_loss(trainer.model, batch).item()
    trl_margin = trainer._metrics["train"]["rewards/margins"][-1]

    examples = []
    for ids, mask, completion in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        n = int(mask.sum())
        labels = torch.where(completion.bool(), ids, IGNORE)
        examples.append(Example(ids[:n].tolist(), labels[:n].tolist()))
    half = len(examples) // 2
    pairs = [Pair(c, r) for c, r in zip(examples[:half], examples[half:])]
    with torch.no_grad():
        chosen, rejected = (
            sequence_logps(policy, [getattr(p, s) for p in pairs], 0, CPU) for s in ("chosen", "rejected")
        )
        ref_c, ref_r = (
            sequence_logps(reference, [getattr(p, s) for p in pairs], 0, CPU) for s in ("chosen", "rejected")
        )
    ours = dpo_loss(chosen, rejected, ref_c, ref_r, beta).mean().item()
    # TRL sums its log-probabilities through its own fused head, in another order: float32 rounding apart
    assert ours == pytest.approx(trl_loss, rel=1e-4)
    assert abs(ours - 0.6931) > 0.01  # not the untrained loss: the comparison says something

    for p, c, r in zip(pairs, ref_c.tolist(), ref_r.tolist()):
        p.ref_chosen, p.ref_rejected = c, r
    rows_ = preference_rows(list(zip(chosen.tolist(), rejected.tolist())), pairs, beta)
    assert sum(r["reward_margin"] for r in rows_) / len(rows_) == pytest.approx(trl_margin, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("kind", ["lora", "qlora", "full"])
def test_sequence_logps_agree_packed_padded_and_by_the_models_own_forward(tok, kind):
    pairs = pairs_of(tok, TRAIN, 4)
    examples = [e for p in pairs for e in (p.chosen, p.rejected)]
    model = trained(kind, tok).eval()
    with torch.no_grad():
        padded = sequence_logps(model, examples, tok.pad_token_id, CPU)
        packed = sequence_logps(model, examples, tok.pad_token_id, CPU, pack_length=512)
        own = model_forward_logps(model, examples, tok.pad_token_id, CPU)
    # QLoRA computes in bf16: sums of ~200 log-probabilities then differ by a few 1e-4 between batch shapes
    rtol = 1e-3 if kind == "qlora" else 1e-5
    torch.testing.assert_close(packed, padded, rtol=rtol, atol=1e-3)
    torch.testing.assert_close(own, padded, rtol=rtol, atol=1e-3)
    assert (padded < 0).all()


def test_reference_is_the_base_with_the_adapter_disabled_measured_once(tok, tmp_path):
    pairs = pairs_of(tok, TRAIN, 6)
    base = load_base_model(SRC, adapter("lora"), CPU)
    expected = measure_logps(base, pairs, tok.pad_token_id, CPU, 4)
    model = trained("lora", tok)  # a LoRA whose weights moved: enabled, it is not the base
    assert attach_reference(model, pairs, tok.pad_token_id, CPU, 4, tmp_path) is True
    got = [(p.ref_chosen, p.ref_rejected) for p in pairs]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), rtol=0, atol=1e-4)
    assert model.training  # left as it was
    moved = measure_logps(model, pairs, tok.pad_token_id, CPU, 4)
    assert max(abs(a - b) for x, y in zip(moved, expected) for a, b in zip(x, y)) > 1e-2

    # A resumed attempt reads them back for the same pairs, and measures again for different ones.
    again = pairs_of(tok, TRAIN, 6)
    assert attach_reference(model, again, tok.pad_token_id, CPU, 4, tmp_path) is False
    assert [(p.ref_chosen, p.ref_rejected) for p in again] == got
    assert attach_reference(model, pairs_of(tok, TRAIN, 5), tok.pad_token_id, CPU, 4, tmp_path) is True
    assert sorted(f.name for f in tmp_path.iterdir()) == [REFERENCE_FILE]


def test_dpo_training_makes_held_out_pairs_preferred(tok, tmp_path):
    """LoRA DPO on 32 WikiSQL pairs (the corrupted SQL is the non-preferred answer): on 16 held-out pairs the tuned
    model prefers the right SQL far more often than the base, and its reward margin is positive. Checkpoints and the
    loop are the supervised ones: the loss falls, a checkpoint is written."""
    train_pairs, held = pairs_of(tok, TRAIN, 32), pairs_of(tok, VALID, 16)
    beta = 0.1
    ad = adapter("lora")
    torch.manual_seed(0)
    model = load_base_model(SRC, ad, CPU)
    base = preference_rows(measure_logps(model, held, tok.pad_token_id, CPU, 8), held, beta, reference_is_model=True)
    model = wrap_for_training(model, ad, SRC, False, tok.eos_token_id)
    attach_reference(model, train_pairs + held, tok.pad_token_id, CPU, 8, tmp_path)
    log: list[dict] = []
    objective = PreferenceObjective(beta, tok.pad_token_id, CPU, 512)
    cfg = config(n_epochs=2, micro_batch_size=4, grad_accum=2, learning_rate=2e-3, logging_steps=1)
    summary = train(model, train_pairs, cfg, tok.pad_token_id, CPU, tmp_path, hooks(log), None, objective)
    tuned = preference_rows(measure_logps(model, held, tok.pad_token_id, CPU, 8), held, beta)

    def mean(rows, key):
        return sum(r[key] for r in rows) / len(rows)

    assert summary.steps == 8 and (tmp_path / "step-8").is_dir()
    assert log[0]["train_loss"] == pytest.approx(0.6931, abs=0.01)  # policy == reference at the first step
    assert log[-1]["train_loss"] < 0.3
    assert mean(base, "reward_margin") == 0.0
    assert mean(tuned, "preference_accuracy") >= mean(base, "preference_accuracy") + 0.3
    assert mean(tuned, "preference_accuracy") >= 0.8
    assert mean(tuned, "reward_margin") > 0.5
    assert summary.trained_tokens == 2 * sum(p.tokens for p in train_pairs)

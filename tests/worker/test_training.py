"""The training path in-process on the tiny real Llama: formatting and label masks, the adapter methods,
adapter-vs-base weights, and resuming from a checkpoint (full fine-tuning and evaluation: test_worker_eval.py)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DATASETS
from tests.helpers.generation import forward_greedy
from tests.helpers.training import SRC, adapter, config, hooks, sql_examples
from worker.training.checkpoints import latest_checkpoint
from worker.training.data import IGNORE, Formatter, split_rows
from worker.training.loop import StopTraining, train
from worker.training.modeling import (
    ModelRefused,
    check_model_source,
    load_base_model,
    wrap_for_training,
)


def test_completion_only_labels(tok):
    fmt = Formatter(tok, 512)
    ex = fmt.example({"prompt": "Q: two plus two?\nA: ", "completion": "four"})
    # the prompt's trailing space moves to the completion ("A:", "▁four"), as the tokenizer would split it
    prompt_len = 1 + len(fmt.encode("Q: two plus two?\nA:"))
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids[-1] == tok.eos_token_id
    assert ex.labels[:prompt_len] == [IGNORE] * prompt_len
    assert ex.labels[prompt_len:] == ex.input_ids[prompt_len:]
    assert tok.decode(ex.labels[prompt_len:-1]).strip() == "four"
    assert (
        Formatter(tok, 512).generation_row({"prompt": "Q: two plus two?\nA: ", "completion": "four"}).prompt_ids
        == (ex.input_ids[:prompt_len])
    )  # generation sees exactly the prompt tokens training saw
    text = fmt.example({"text": "Once upon a time"})
    assert text.labels == text.input_ids  # raw text: every token is trained


def test_chat_trains_only_assistant_turns(tok):
    fmt = Formatter(tok, 512)
    msgs = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello friend"}]
    ex = fmt.example({"messages": msgs})
    trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
    assert "hello friend" in trained and "hi there" not in trained

    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    try:
        ex = Formatter(tok, 512).example({"messages": msgs})
        trained = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE])
        assert "hello friend" in trained and "hi there" not in trained and "user" not in trained
        row = Formatter(tok, 512).generation_row({"messages": msgs})
        assert row.prompt.endswith("<|assistant|>") and row.reference == "hello friend"
    finally:
        tok.chat_template = None


def test_split_is_seeded_and_disjoint():
    rows = [{"text": str(i)} for i in range(50)]
    a_train, a_eval = split_rows(rows, 0.1, seed=1)
    b_train, b_eval = split_rows(rows, 0.1, seed=1)
    assert a_eval == b_eval and len(a_eval) == 5 and len(a_train) == 45
    assert not {r["text"] for r in a_eval} & {r["text"] for r in a_train}
    assert split_rows(rows, 0.1, seed=2)[1] != a_eval


@pytest.mark.parametrize("kind", ["lora", "qlora", "prompt_tuning"])
def test_each_method_trains_adapter_only(tok, tmp_path, kind):
    torch.manual_seed(0)
    model = load_base_model(SRC, adapter(kind), torch.device("cpu"))
    model = wrap_for_training(model, adapter(kind), SRC, gradient_checkpointing=False, eos_token_id=tok.eos_token_id)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log: list[dict] = []
    summary = train(
        model,
        sql_examples(tok),
        config(learning_rate=3e-2 if kind == "prompt_tuning" else 5e-3),
        tok.pad_token_id,
        torch.device("cpu"),
        tmp_path,
        hooks(log),
    )
    assert summary.steps == 6 and summary.trained_tokens > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed and changed <= trainable  # the adapter moved, the frozen base did not
    if kind == "prompt_tuning":
        assert all("prompt_encoder" in n for n in changed)
    else:
        assert all("lora_" in n or "trainable_tokens" in n for n in changed)
        assert any("trainable_tokens" in n for n in changed)  # the EOS row learns too (train_eos_token)
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert latest_checkpoint(tmp_path) is not None  # an epoch end always checkpoints


def test_qlora_base_is_4bit_nf4():
    model = load_base_model(SRC, adapter("qlora"), torch.device("cpu"))
    layer = model.model.layers[0].self_attn.q_proj
    assert type(layer).__name__ == "Linear4bit"
    assert layer.weight.quant_state.quant_type == "nf4" and layer.weight.quant_state.nested  # double quant


def test_resume_from_checkpoint_matches_uninterrupted_run(tok, tmp_path):
    examples = sql_examples(tok, 16)
    cfg = config(n_epochs=2, micro_batch_size=4)
    ad = adapter("lora", dropout=0.1)

    def fresh():
        torch.manual_seed(0)
        return wrap_for_training(load_base_model(SRC, ad, torch.device("cpu")), ad, SRC, False)

    straight = fresh()
    train(straight, examples, cfg, tok.pad_token_id, torch.device("cpu"), tmp_path / "a", hooks())

    interrupted = fresh()
    with pytest.raises(StopTraining):  # stops after the first epoch's checkpoint, as a crash or a kill would
        train(interrupted, examples, cfg, tok.pad_token_id, torch.device("cpu"), tmp_path / "b", hooks(stop_at=4))
    assert latest_checkpoint(tmp_path / "b").name == "step-4"
    (tmp_path / "b" / ".tmp-step-6-123").mkdir()  # a half-written checkpoint is never picked
    resumed = fresh()
    summary = train(resumed, examples, cfg, tok.pad_token_id, torch.device("cpu"), tmp_path / "b", hooks())
    assert summary.resumed_from == 4 and summary.steps == 8
    a = dict(straight.named_parameters())
    for name, p in resumed.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p, a[name], rtol=1e-5, atol=1e-6)


def test_unsafe_model_directories_are_refused(tmp_path):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelRefused, match="safetensors"):
        check_model_source(str(tmp_path / "pickled"))
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "model.safetensors").write_bytes(b"")
    (remote / "config.json").write_text('{"auto_map": {"AutoModelForCausalLM": "x.Y"}}')
    with pytest.raises(ModelRefused, match="remote code"):
        check_model_source(str(remote))
    check_model_source(SRC)  # the real model passes


def test_best_checkpoint_is_kept_and_reported(tok, tmp_path):
    """The epoch whose selection metric is best survives checkpoint rotation and is named in the summary."""
    examples = sql_examples(tok, 8)
    scores = iter([0.2, 0.9, 0.5, 0.1])  # epoch 2 is the best
    h = hooks()
    h.on_evaluate = lambda step, epoch: {"rougeL": next(scores)}
    model = wrap_for_training(load_base_model(SRC, adapter("lora"), torch.device("cpu")), adapter("lora"), SRC, False)
    summary = train(
        model,
        examples,
        config(n_epochs=4, micro_batch_size=4),
        tok.pad_token_id,
        torch.device("cpu"),
        tmp_path,
        h,
        selection=("rougeL", True),
    )
    assert (summary.best_step, summary.best_value) == (4, 0.9)
    # every epoch end was evaluated: all keep their weights; only the newest two keep their trainer state
    kept = sorted(p.name for p in tmp_path.glob("step-*") if (p / "adapter_model.safetensors").is_file())
    assert kept == ["step-2", "step-4", "step-6", "step-8"]
    assert sorted(p.parent.name for p in tmp_path.glob("step-*/trainer_state.pt")) == ["step-6", "step-8"]
    assert summary.best_path == tmp_path / "step-4"


def test_batched_generation_equals_one_row_at_a_time(tok):
    """Left-padded batches of mixed lengths give the same greedy output as single rows and as greedy decoding by
    full forward passes, for LoRA and for prompt tuning (whose virtual tokens the service puts after each row's
    padding)."""
    from app.datasets import iter_records
    from worker.evaluation.generation import generate

    recs = list(iter_records(DATASETS / "wikisql" / "test.jsonl", "jsonl", completion_separator="\nA: "))[:6]
    rows = [Formatter(tok, 512).generation_row(r) for r in recs]
    assert len({len(r.prompt_ids) for r in rows}) > 1  # the batch really needs padding
    for kind in ("lora", "prompt_tuning"):
        torch.manual_seed(1)
        model = wrap_for_training(load_base_model(SRC, adapter(kind), torch.device("cpu")), adapter(kind), SRC, False)
        model.eval()
        if kind == "lora":  # make the adapter non-trivial (lora_B starts at zero)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(p, std=0.05)
        batched = generate(model, tok, rows, 24, 6, torch.device("cpu"))
        single = [generate(model, tok, [r], 24, 1, torch.device("cpu"))[0] for r in rows]
        assert batched == single, kind
        # and the ground truth: one row at a time by full forward passes (not `generate` of a library release)
        assert [forward_greedy(model, tok, r.prompt_ids, 24) for r in rows] == batched, kind

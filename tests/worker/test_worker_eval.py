"""Full fine-tuning, per-row evaluation figures, evaluation intervals, early stopping and checkpoint retention,
in-process on the tiny real Llama (no database)."""

from __future__ import annotations

import math
import tarfile
import time

import pytest
import torch

from tests.conftest import DATASETS
from tests.helpers.factories import job_spec
from tests.helpers.training import CPU, SRC, adapter, config, hooks, sql_examples
from worker.evaluation.evaluate import EvalSet, evaluate, teacher_forced_stats
from worker.evaluation.generation import generate
from worker.training.checkpoints import FULL_WEIGHTS, latest_checkpoint, load_trainable_weights
from worker.training.data import Formatter
from worker.training.loop import StopTraining, train
from worker.training.modeling import (
    ModelRefused,
    count_params,
    count_params_of_config,
    is_peft,
    load_base_model,
    wrap_for_training,
)


def full_model():
    torch.manual_seed(0)
    return wrap_for_training(load_base_model(SRC, adapter("full"), CPU), adapter("full"), SRC, False)


def lora_model(seed: int = 1):
    torch.manual_seed(seed)
    model = wrap_for_training(load_base_model(SRC, adapter("lora"), CPU), adapter("lora"), SRC, False)
    for name, p in model.named_parameters():  # lora_B starts at zero: make the adapter change the outputs
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


# ---------------------------------------------------------------- full fine-tuning


def test_full_finetune_trains_every_weight(tok, tmp_path):
    model = full_model()
    assert not is_peft(model)
    trainable, total = count_params(model)
    assert trainable == total == count_params_of_config(SRC) == sum(p.numel() for p in model.parameters())
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied: counted once
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    log: list[dict] = []
    summary = train(model, sql_examples(tok), config(learning_rate=1e-3), tok.pad_token_id, CPU, tmp_path, hooks(log))
    assert summary.steps == 6
    unchanged = [n for n, p in model.named_parameters() if torch.equal(before[n], p.detach())]
    assert unchanged == []  # every weight of the model moved: embeddings, attention, MLP, norms
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert (tmp_path / "step-6" / FULL_WEIGHTS).is_file()
    assert not (tmp_path / "step-6" / "adapter_model.safetensors").exists()


def test_full_finetune_resumes_to_the_uninterrupted_weights(tok, tmp_path):
    examples = sql_examples(tok, 16)
    cfg = config(n_epochs=2, micro_batch_size=4, learning_rate=1e-3)
    straight = full_model()
    train(straight, examples, cfg, tok.pad_token_id, CPU, tmp_path / "a", hooks())

    interrupted = full_model()
    with pytest.raises(StopTraining):
        train(interrupted, examples, cfg, tok.pad_token_id, CPU, tmp_path / "b", hooks(stop_at=4))
    assert latest_checkpoint(tmp_path / "b").name == "step-4"
    first = torch.load(tmp_path / "b" / "step-4" / "trainer_state.pt", weights_only=False)["train_seconds"]
    assert first > 0
    resumed = full_model()  # base weights again: only the checkpoint can bring back the first epoch
    summary = train(resumed, examples, cfg, tok.pad_token_id, CPU, tmp_path / "b", hooks())
    assert summary.resumed_from == 4 and summary.steps == 8
    assert summary.train_seconds > first  # the first attempt's training time is carried over
    a = dict(straight.named_parameters())
    for name, p in resumed.named_parameters():
        torch.testing.assert_close(p, a[name], rtol=0, atol=0, msg=name)


def test_full_finetune_refuses_models_over_the_limit():
    n = count_params_of_config(SRC)
    with pytest.raises(ModelRefused) as err:
        load_base_model(SRC, adapter("full"), CPU, max_full_params=n - 1)
    assert err.value.code == "model_too_large_for_full"
    load_base_model(SRC, adapter("full"), CPU, max_full_params=n)  # at the limit: fine
    load_base_model(SRC, adapter("lora"), CPU, max_full_params=1)  # the limit is for full fine-tuning only


def test_full_model_archive_loads_without_peft(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    from worker.evaluation.artifacts import package_adapter
    from worker.evaluation.model_card import model_card

    model = full_model()
    train(model, sql_examples(tok, 8), config(learning_rate=1e-3), tok.pad_token_id, CPU, tmp_path / "ck", hooks())
    spec = job_spec(adapter={"type": "full"})
    job = {"id": "ftjob-x", "model": "stories260k", "fine_tuned_model": "ft:x", "seed": 1}
    card = model_card(job, spec, {"eval_loss": 3.0}, {"eval_loss": 2.0}, count_params(model), step=2)
    archive, digest, size = package_adapter(
        model, tok, tmp_path / "adapter", tmp_path / "a.tar.gz", card, base_model="stories260k"
    )
    assert size == archive.stat().st_size and len(digest) == 64
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "out", filter="data")
    assert {"adapter/model.safetensors", "adapter/config.json", "adapter/README.md", "adapter/tokenizer.json"} <= names
    assert "adapter/adapter_config.json" not in names
    text = (tmp_path / "out" / "adapter" / "README.md").read_text()
    assert "AutoModelForCausalLM.from_pretrained('path/to/this/folder')" in text and "PeftModel" not in text
    assert "step 2" in text and "library_name: transformers" in text
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "adapter")
    trained = dict(model.named_parameters())
    for name, p in loaded.named_parameters():
        torch.testing.assert_close(p, trained[name], rtol=0, atol=0)
    # generation works on the plain model (no peft), in batches, and the download reproduces it
    rows = EvalSet.build(Formatter(tok, 256), eval_rows()).gen_rows
    outputs = generate(model, tok, rows, 12, 3, CPU)
    assert any(outputs) and generate(loaded, tok, rows, 12, 3, CPU) == outputs


def test_full_checkpoint_weights_round_trip(tok, tmp_path):
    model = full_model()
    train(model, sql_examples(tok, 8), config(learning_rate=1e-3), tok.pad_token_id, CPU, tmp_path, hooks())
    fresh = full_model()
    load_trainable_weights(tmp_path / "step-2", fresh)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))


# ---------------------------------------------------------------- per-row evaluation figures


def eval_rows() -> list[dict]:
    from app.datasets import iter_records

    sql = list(iter_records(DATASETS / "wikisql" / "test.jsonl", "jsonl", completion_separator="\nA: "))[:5]
    return [
        sql[0],
        {"text": "Once upon a time there was a little dog. " * 80},  # raw text, longer than the prompt cap
        sql[1],
        {"prompt": "Q: ", "completion": "word " * 200},  # its answer alone is over max_seq_length: no loss tokens
        sql[2],
        {"text": "The cat sat on the mat."},
        sql[3],
    ]


def test_per_row_sums_reproduce_the_aggregates(tok):
    rows = eval_rows()
    es = EvalSet.build(Formatter(tok, 128), rows)
    assert es.loss_index == [0, 1, 2, 4, 5, 6] and es.gen_index == [0, 2, 3, 4, 6]
    model = lora_model()
    spec = {"metrics": ["rouge", "perplexity", "token_accuracy"], "batch_size": 3, "max_new_tokens": 8}
    res = evaluate(model, tok, loss_examples=es.loss_examples, gen_rows=es.gen_rows, spec=spec, device=CPU)
    scores, outputs, shown = es.scores(res), es.outputs(res), es.shown()
    assert len(scores) == len(outputs) == len(shown) == len(rows)  # one per evaluation row, by position

    # raw text: the text (capped) as prompt, no reference, no output, only teacher-forced figures
    assert shown[1] == (rows[1]["text"][:2000], "") and len(rows[1]["text"]) > 2000
    assert outputs[1] is None and outputs[5] is None and set(scores[1]) == {"nll", "loss_tokens", "correct_tokens"}
    # the row whose answer is too long to train: generated and scored by ROUGE, but no loss tokens
    assert outputs[3] is not None and "rougeL" in scores[3] and "nll" not in scores[3]
    assert shown[0] == (rows[0]["prompt"], rows[0]["completion"])

    tf = [s for s in scores if s and "nll" in s]
    tokens = sum(s["loss_tokens"] for s in tf)
    loss = sum(s["nll"] for s in tf) / tokens
    assert res.metrics["eval_loss"] == loss  # exactly, not approximately
    assert res.metrics["perplexity"] == math.exp(min(loss, 50.0))
    assert res.metrics["token_accuracy"] == sum(s["correct_tokens"] for s in tf) / tokens
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        have = [s[key] for s in scores if s and key in s]
        assert len(have) == 5 and res.metrics[key] == sum(have) / len(have)


def test_per_example_sums_are_each_examples_own(tok):
    """Each row's nll is its own (not mixed with its batch's padding or neighbours): it equals the model's
    own loss on that example alone, times its token count, whatever the batch size."""
    es = EvalSet.build(Formatter(tok, 128), eval_rows())
    model = lora_model().eval()
    _, batched = teacher_forced_stats(model, es.loss_examples, 4, tok.pad_token_id, CPU)
    _, single = teacher_forced_stats(model, es.loss_examples, 1, tok.pad_token_id, CPU)
    for ex, b, s in zip(es.loss_examples, batched, single):
        assert b["loss_tokens"] == s["loss_tokens"] == ex.num_loss_tokens - 1 + (ex.labels[0] == -100)
        assert b["correct_tokens"] == s["correct_tokens"]
        with torch.no_grad():
            own = model(input_ids=torch.tensor([ex.input_ids]), labels=torch.tensor([ex.labels])).loss.item()
        assert b["nll"] == pytest.approx(own * b["loss_tokens"], rel=1e-5)
        assert b["nll"] == pytest.approx(s["nll"], rel=1e-5)


# ---------------------------------------------------------------- evaluation intervals and early stopping


def recording_hooks(metric=None, **kw):
    """Hooks that record evaluations and checkpoints; `metric(step)` gives the evaluated metrics."""
    h = hooks(**kw)
    h.evaluated, h.checkpoints = [], []
    h.on_evaluate = lambda step, epoch: (h.evaluated.append(step), metric(step) if metric else {})[1]
    h.on_checkpoint = lambda step, epoch, path, metrics, evaluated: h.checkpoints.append((step, evaluated))
    return h


@pytest.mark.parametrize(
    ("every", "evaluated", "checkpoints"),
    [
        (None, [6, 12], [(6, True), (12, True)]),  # default: each epoch end
        (4, [4, 8, 12], [(4, True), (6, False), (8, True), (12, True)]),  # epoch ends still checkpoint
        (5, [5, 10, 12], [(5, True), (6, False), (10, True), (12, True)]),  # and the last step always evaluates
    ],
)
def test_eval_every_steps(tok, tmp_path, every, evaluated, checkpoints):
    h = recording_hooks()
    cfg = config(n_epochs=2, eval_every_steps=every)
    model = lora_model()
    train(model, sql_examples(tok, 24), cfg, tok.pad_token_id, CPU, tmp_path, h, selection=("eval_loss", False))
    assert h.evaluated == evaluated
    assert h.checkpoints == checkpoints
    evaluated_dirs = sorted(int(p.parent.name[5:]) for p in tmp_path.glob("step-*/EVALUATED"))
    assert evaluated_dirs == evaluated


def eval_loss_hook(model, tok):
    examples = sql_examples(tok, 8)
    return lambda step: teacher_forced_stats(model, examples, 8, tok.pad_token_id, CPU)[0]


def test_early_stopping_after_patience_evaluations_without_improvement(tok, tmp_path):
    # Learning rate 0 (refused by the API, allowed here): the weights never move, so after the first
    # evaluation eval_loss is never strictly better.
    model = lora_model()
    h = recording_hooks(eval_loss_hook(model, tok))
    cfg = config(n_epochs=2, learning_rate=0.0, eval_every_steps=1, early_stopping_patience=2)
    examples = sql_examples(tok, 24)
    summary = train(model, examples, cfg, tok.pad_token_id, CPU, tmp_path, h, selection=("eval_loss", False))
    assert h.evaluated == [1, 2, 3]  # best at 1, then two without improvement
    assert (summary.stopped_early, summary.steps, summary.best_step) == (3, 3, 1)
    assert summary.total_steps == 12 and summary.epoch == 0.5
    # A new attempt (the job crashed after stopping) does not train on.
    again = recording_hooks(eval_loss_hook(model, tok))
    summary = train(model, examples, cfg, tok.pad_token_id, CPU, tmp_path, again, selection=("eval_loss", False))
    assert again.evaluated == [] and (summary.stopped_early, summary.steps) == (3, 3)


def test_no_early_stop_while_improving(tok, tmp_path):
    h = recording_hooks(lambda step: {"rougeL": step / 100})  # better at every evaluation
    cfg = config(n_epochs=2, eval_every_steps=1, early_stopping_patience=1)
    model = lora_model()
    summary = train(model, sql_examples(tok, 24), cfg, tok.pad_token_id, CPU, tmp_path, h, selection=("rougeL", True))
    assert summary.stopped_early is None and h.evaluated == list(range(1, 13)) and summary.best_step == 12


def test_early_stopping_count_survives_a_resume(tok, tmp_path):
    model = lora_model()
    cfg = config(n_epochs=2, learning_rate=0.0, eval_every_steps=1, early_stopping_patience=3)
    examples = sql_examples(tok, 24)
    first = recording_hooks(eval_loss_hook(model, tok), stop_at=2)
    with pytest.raises(StopTraining):  # crash after step 2: one evaluation without improvement so far
        train(model, examples, cfg, tok.pad_token_id, CPU, tmp_path, first, selection=("eval_loss", False))
    assert first.evaluated == [1, 2]
    model = lora_model()
    second = recording_hooks(eval_loss_hook(model, tok))
    summary = train(model, examples, cfg, tok.pad_token_id, CPU, tmp_path, second, selection=("eval_loss", False))
    # without the stored count the stop would come at step 5; without the stored best either, at 6
    assert second.evaluated == [3, 4] and summary.stopped_early == 4 and summary.best_step == 1


def test_train_seconds_leave_evaluations_out(tok, tmp_path):
    h = recording_hooks(lambda step: time.sleep(0.5) or {})
    summary = train(lora_model(), sql_examples(tok, 16), config(n_epochs=2), tok.pad_token_id, CPU, tmp_path, h)
    assert h.evaluated == [4, 8]
    assert 0 < summary.train_seconds <= summary.seconds - 0.9
    assert summary.peak_memory_bytes > 10 * 2**20  # the process's peak RSS: at least torch's own


# ---------------------------------------------------------------- checkpoint retention


def test_evaluated_checkpoints_keep_weights_and_drop_trainer_state(tok, tmp_path):
    """Checkpoints every step (time-based), evaluations at epoch ends (2 steps each, 3 epochs)."""
    model = lora_model()
    weights_at: dict[int, dict] = {}

    def metric(step):
        weights_at[step] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return {}

    h = recording_hooks(metric)
    train(model, sql_examples(tok, 8), config(n_epochs=3, checkpoint_every_s=0), tok.pad_token_id, CPU, tmp_path, h)
    assert h.checkpoints == [(1, False), (2, True), (3, False), (4, True), (5, False), (6, True)]
    on_disk = {p.name: sorted(f.name for f in p.iterdir()) for p in tmp_path.glob("step-*")}
    weights_only = ["COMPLETE", "EVALUATED", "adapter_model.safetensors"]
    assert on_disk == {
        "step-2": weights_only,
        "step-4": weights_only,
        "step-5": ["COMPLETE", "adapter_model.safetensors", "trainer_state.pt"],  # among the newest two
        "step-6": weights_only + ["trainer_state.pt"],
    }  # step-1 and step-3 (not evaluated, not among the newest two) are gone
    assert latest_checkpoint(tmp_path).name == "step-6"
    restored = lora_model(seed=5)
    load_trainable_weights(tmp_path / "step-2", restored)
    for name, p in restored.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, weights_at[2][name]), name


def test_qlora_base_evaluates_on_a_cpu_with_any_layer_width(tok):
    """bitsandbytes repacks 4-bit weights for an AVX512-BF16 kernel on the first no-grad CPU forward and asserts
    widths divisible by 32; stories260k's MLP is 172 wide. load_base_model turns that kernel off on CPUs, so
    base and tuned evaluation of a QLoRA job work on every CPU (they crashed on AVX512-BF16 machines)."""
    model = load_base_model(SRC, adapter("qlora"), CPU)
    model.eval()
    ids = torch.tensor([tok("Q: how many rows?\nA:", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    assert all(not getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules())


@pytest.mark.parametrize("kind", ["lora", "qlora"])
def test_a_trained_adapter_switched_off_evaluates_exactly_as_the_base(kind, tok):
    """The training child measures a LoRA or QLoRA job's base after training, with the adapter switched off
    (worker/child/recipe.py): the numbers must be the untouched base model's, generation included."""
    from tests.helpers.training import trained

    rows = [{"prompt": e["prompt"], "completion": e["completion"]} for e in _sql_rows(6)]
    fmt = Formatter(tok, 256)
    es = EvalSet.build(fmt, rows)
    spec = {"metrics": ["rouge", "perplexity", "token_accuracy"], "batch_size": 3, "max_new_tokens": 8}

    def measured(model):
        res = evaluate(model.eval(), tok, loss_examples=es.loss_examples, gen_rows=es.gen_rows, spec=spec, device=CPU)
        return res.metrics, es.outputs(res)

    base = measured(wrap_for_training(load_base_model(SRC, adapter(kind), CPU), adapter(kind), SRC, False))
    model = trained(kind, tok)  # every trained weight moved, the EOS row included
    tuned = measured(model)
    with model.disable_adapter():
        switched_off = measured(model)
    assert tuned != base  # the adapter changes what the model says
    assert switched_off[1] == base[1]
    for name, value in base[0].items():
        assert switched_off[0][name] == pytest.approx(value, rel=1e-5), name


def _sql_rows(n: int) -> list[dict]:
    from app.datasets import iter_records

    return list(iter_records(DATASETS / "wikisql" / "train.jsonl", "jsonl", completion_separator="\nA: "))[:n]

"""Qualitative comparisons, the worker side: prompts formatted as each job trained, and real adapters trained
here on the tiny Llama (LoRA, prompt tuning, QLoRA and a full fine-tune), whose outputs must equal plain
generation with the base model and with each adapter loaded by peft; the task, its redelivery and its failures,
without Celery (the API side: tests/api/test_api_comparisons.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch

from app.core.job_spec import JobCreate, resolve_spec
from app.core.tables import Comparison, ComparisonStatus, File, Job, Tenant
from tests.conftest import DATASETS, TEST_ENV
from tests.helpers.factories import adapter_job, make_file_row
from tests.helpers.generation import forward_greedy
from tests.helpers.training import SRC

JOBS_DIR = Path(TEST_ENV["FTAAS_ARTIFACTS_DIR"]) / "jobs"


# ================================================================== the task, on the training queue


def test_the_worker_registers_the_task_on_the_training_queue():
    from app.core.celery_app import COMPARE_TASK
    from worker.tasks import celery

    celery.loader.import_default_modules()  # what `celery -A worker.tasks worker` does at start-up
    assert COMPARE_TASK == "ftaas.compare" and COMPARE_TASK in celery.tasks
    assert celery.amqp.router.route({}, COMPARE_TASK)["queue"].name == TEST_ENV["FTAAS_QUEUE_NAME"]


# ================================================================== prompt formatting (tokenizer only)


def test_prompts_are_formatted_as_each_job_trained(tok):
    from app.datasets.records import format_instruction
    from worker.child.comparison import generation_rows
    from worker.training.data import Formatter

    fmt = Formatter(tok, 512)
    bos = [tok.bos_token_id]

    def ids(text: str) -> list[int]:
        return bos + tok(text, add_special_tokens=False)["input_ids"]

    (pc,) = generation_rows(fmt, "prompt_completion", ["Q: two plus two?\nA: "], preformatted=False)
    assert pc.prompt_ids == ids("Q: two plus two?\nA:")  # the trailing space moves to the completion, as trained
    (text,) = generation_rows(fmt, "text", ["Once upon a time"], preformatted=False)
    assert text.prompt_ids == ids("Once upon a time")
    (inst,) = generation_rows(fmt, "instruction", ["Name a colour."], preformatted=False)
    assert inst.prompt == format_instruction("Name a colour.") and inst.prompt_ids == ids(inst.prompt)
    (chat,) = generation_rows(fmt, "chat", ["hi there"], preformatted=False)
    # no chat template: ftaas' plain one, as trained (it writes the BOS itself, once)
    assert chat.prompt == "<s>### User:\nhi there\n\n### Assistant:\n" and chat.prompt_ids.count(tok.bos_token_id) == 1
    # Held-out rows are the evaluation's own (already formatted) prompts: verbatim, same ids as the evaluation.
    msgs = {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]}
    evaluated = fmt.generation_row(msgs)
    (again,) = generation_rows(fmt, "chat", [evaluated.prompt], preformatted=True)
    assert again.prompt_ids == evaluated.prompt_ids == chat.prompt_ids


# ================================================================== worker: real adapters, no Celery


def adapter_spec(kind: str):
    spec = resolve_spec(JobCreate(model="stories260k", training_file="file-x", adapter={"type": kind})).adapter
    return spec.model_copy(update={"dropout": 0.0, "r": 8, "alpha": 16, "num_virtual_tokens": 8})


def sql_records(path: str, n: int) -> list[dict]:
    from app.datasets import iter_records

    return list(iter_records(DATASETS / "wikisql" / path, "jsonl", completion_separator="\nA: "))[:n]


def train_briefly(model, tok, steps: int, lr: float) -> None:
    """A few AdamW steps on WikiSQL completions: enough to move the weights away from the base."""
    from worker.training.data import IGNORE, Formatter

    fmt = Formatter(tok, 256)
    examples = [fmt.example(r) for r in sql_records("train.jsonl", 32)]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        batch = [examples[(step * 4 + i) % len(examples)] for i in range(4)]
        width = max(len(e.input_ids) for e in batch)
        ids = torch.tensor([e.input_ids + [tok.pad_token_id] * (width - len(e.input_ids)) for e in batch])
        labels = torch.tensor([e.labels + [IGNORE] * (width - len(e.labels)) for e in batch])
        mask = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in batch])
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def service_ids(tok, prompt: str) -> list[int]:
    """A prompt/completion job's prompt as the service tokenizes it: BOS + the prompt without trailing spaces."""
    return [tok.bos_token_id] + tok(prompt.rstrip(" "), add_special_tokens=False)["input_ids"]


def plain_generate(model, tok, prompt: str, max_new_tokens: int) -> str:
    """One prompt, no padding, greedy by full forward passes: the ground truth, whatever `generate` a library
    release ships (peft's for prompt tuning changed with transformers 5.24)."""
    return forward_greedy(model, tok, service_ids(tok, prompt), max_new_tokens)


def batched_generate(model, tok, prompts: list[str], max_new_tokens: int) -> list[str]:
    """The 4-bit models compute in bf16, where a left-padded batch and a lone row can round differently and
    greedy decoding then diverges: those are compared with the same batched generation the evaluation uses."""
    from worker.evaluation.generation import generate
    from worker.training.data import GenerationRow

    rows = [GenerationRow(prompt=p, prompt_ids=service_ids(tok, p), reference="") for p in prompts]
    return generate(model, tok, rows, max_new_tokens, 16, torch.device("cpu"))


MAX_NEW = 24


@pytest.fixture(scope="module")
def trained(database, tok):
    """A tenant with four succeeded jobs whose adapters lie where the training child leaves them:
    LoRA, prompt tuning and QLoRA saved by peft, and a full fine-tune saved as a whole model."""
    from app.core.db import get_sessionmaker
    from worker.training.modeling import load_base_model, wrap_for_training

    Session = get_sessionmaker()
    with Session() as s:
        tenant = Tenant(name=f"cmp-worker-{uuid.uuid4().hex[:8]}")
        s.add(tenant)
        s.flush()
        file = make_file_row(s, tenant, num_rows=10, token_estimate=50)
        jobs = {
            kind: adapter_job(s, tenant, file, adapter_type=kind) for kind in ("lora", "prompt_tuning", "full", "qlora")
        }
        s.commit()
        tenant_id, job_ids = tenant.id, {kind: j.id for kind, j in jobs.items()}

    cpu = torch.device("cpu")
    for kind, job_id in job_ids.items():
        folder = JOBS_DIR / job_id / "adapter"
        torch.manual_seed(0)
        if kind == "full":
            model = load_base_model(SRC, adapter_spec("lora"), cpu)
            for p in model.parameters():
                p.requires_grad_(True)
            train_briefly(model, tok, steps=8, lr=2e-3)
        else:
            spec = adapter_spec(kind)
            model = load_base_model(SRC, spec, cpu)
            model = wrap_for_training(model, spec, SRC, False, tok.eos_token_id)
            train_briefly(model, tok, steps=8, lr=3e-2 if kind == "prompt_tuning" else 5e-3)
        model.save_pretrained(str(folder), safe_serialization=True)
    prompts = [r["prompt"] for r in sql_records("test.jsonl", 3)] + ["Once upon a time, a little dog"]
    yield {"tenant_id": tenant_id, "jobs": job_ids, "prompts": prompts, "Session": Session}
    with Session() as s:
        s.delete(s.get(Tenant, tenant_id))  # cascades to its files, jobs and comparisons
        s.commit()


def new_comparison(trained, kinds: list[str]) -> str:
    with trained["Session"]() as s:
        row = Comparison(
            tenant_id=trained["tenant_id"],
            job_ids=[trained["jobs"][k] for k in kinds],
            prompts=trained["prompts"],
            max_new_tokens=MAX_NEW,
            status=ComparisonStatus.queued,
            results={"source": "prompts", "held_out_job_id": None, "references": None},
        )
        s.add(row)
        s.commit()
        return row.id


def stored(trained, comparison_id: str) -> Comparison:
    with trained["Session"]() as s:
        return s.get(Comparison, comparison_id)


def test_worker_outputs_equal_plain_generation_with_base_and_adapters(trained, tok):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from worker.child.comparison import run_comparison
    from worker.training.modeling import load_base_model, plain_4bit_kernels_on_cpu

    kinds = ["lora", "prompt_tuning", "full", "qlora"]  # the LoRA is unloaded before prompt tuning is applied
    cmp_id = new_comparison(trained, kinds)
    assert run_comparison(cmp_id) == ComparisonStatus.succeeded
    row = stored(trained, cmp_id)
    assert row.status == ComparisonStatus.succeeded and row.error is None and row.finished_at is not None
    res = row.results
    prompts = trained["prompts"]
    cpu = torch.device("cpu")

    # One base per (model, quantization): the plain one, then the 4-bit one the QLoRA job was trained on.
    assert [(b["model"], b["quantized"]) for b in res["base"]] == [("stories260k", False), ("stories260k", True)]
    plain = load_base_model(SRC, adapter_spec("lora"), cpu).eval()
    expected_base = [plain_generate(plain, tok, p, MAX_NEW) for p in prompts]
    assert res["base"][0]["outputs"] == expected_base
    nf4 = load_base_model(SRC, adapter_spec("qlora"), cpu).eval()
    plain_4bit_kernels_on_cpu(nf4, cpu)  # bitsandbytes' AVX512 CPU kernel refuses this model's layer sizes
    assert res["base"][1]["outputs"] == batched_generate(nf4, tok, prompts, MAX_NEW)

    by_job = {j["job_id"]: j for j in res["jobs"]}
    assert [j["job_id"] for j in res["jobs"]] == [trained["jobs"][k] for k in kinds]
    for kind in kinds:
        job_id = trained["jobs"][kind]
        folder = str(JOBS_DIR / job_id / "adapter")
        if kind == "full":
            model = AutoModelForCausalLM.from_pretrained(folder).eval()
        else:
            model = PeftModel.from_pretrained(load_base_model(SRC, adapter_spec(kind), cpu), folder).eval()
            plain_4bit_kernels_on_cpu(model, cpu)
        if kind == "qlora":
            expected = batched_generate(model, tok, prompts, MAX_NEW)
        else:
            expected = [plain_generate(model, tok, p, MAX_NEW) for p in prompts]
        entry = by_job[job_id]
        assert entry["outputs"] == expected, kind
        assert entry["adapter_type"] == kind and entry["model"] == "stories260k"
        assert entry["fine_tuned_model"].endswith(job_id)
        assert entry["outputs"] != expected_base, f"{kind}: the adapter changed nothing"


def test_the_task_runs_the_child_and_a_second_delivery_does_nothing(trained):
    """The Celery task function (called directly) claims the row and runs `python -m worker.child compare ID`."""
    from worker.child.comparison import run_comparison
    from worker.tasks.comparisons import compare

    cmp_id = new_comparison(trained, ["lora"])
    assert compare(cmp_id) == "done"
    row = stored(trained, cmp_id)
    assert row.status == ComparisonStatus.succeeded, row.error
    assert [j["job_id"] for j in row.results["jobs"]] == [trained["jobs"]["lora"]]
    assert len(row.results["base"]) == 1 and len(row.results["base"][0]["outputs"]) == len(trained["prompts"])
    assert compare(cmp_id) == "skipped"  # redelivered: not queued any more
    assert run_comparison(cmp_id) == "skipped"
    assert stored(trained, cmp_id).results == row.results


def test_a_missing_adapter_fails_the_comparison_with_its_reason(trained):
    import shutil

    from worker.child.comparison import run_comparison

    with trained["Session"]() as s:
        tenant = s.get(Tenant, trained["tenant_id"])
        gone = adapter_job(s, tenant, s.get(File, s.get(Job, trained["jobs"]["lora"]).training_file_id))
        s.commit()
        gone_id = gone.id
    shutil.rmtree(JOBS_DIR / gone_id, ignore_errors=True)
    trained["jobs"]["gone"] = gone_id
    cmp_id = new_comparison(trained, ["lora", "gone"])
    assert run_comparison(cmp_id) == ComparisonStatus.failed
    row = stored(trained, cmp_id)
    assert row.status == ComparisonStatus.failed and row.finished_at is not None
    assert row.error["code"] == "adapter_missing" and gone_id in row.error["message"]


def test_a_redelivered_message_takes_over_a_running_comparison(trained):
    """A worker that dies mid-comparison leaves it running; the broker's redelivery (marked `redelivered`)
    runs it again, while a plain duplicate delivery leaves it alone."""
    from worker.tasks.comparisons import compare

    with trained["Session"]() as s:
        tenant = s.get(Tenant, trained["tenant_id"])
        gone = adapter_job(s, tenant, s.get(File, s.get(Job, trained["jobs"]["lora"]).training_file_id))
        s.commit()
        trained["jobs"]["gone2"] = gone.id  # no adapter folder: the child fails fast, with its reason
    cmp_id = new_comparison(trained, ["gone2"])
    with trained["Session"]() as s:
        s.get(Comparison, cmp_id).status = ComparisonStatus.running
        s.commit()

    assert compare(cmp_id) == "skipped"
    assert stored(trained, cmp_id).status == ComparisonStatus.running

    compare.push_request(delivery_info={"redelivered": True})
    try:
        assert compare.run(cmp_id) == "done"
    finally:
        compare.pop_request()
    row = stored(trained, cmp_id)
    assert row.status == ComparisonStatus.failed and row.error["code"] == "adapter_missing"

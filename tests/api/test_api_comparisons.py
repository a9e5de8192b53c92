"""Qualitative comparisons: the API (validation, ownership, paging, the side-by-side shape) and the worker side
on real adapters trained here on the tiny Llama (LoRA, prompt tuning, QLoRA and a full fine-tune), whose
outputs must equal plain generation with the base model and with each adapter loaded by peft."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import redis
import torch
from sqlalchemy import func, select

from app.core.job_spec import JobCreate, resolve_spec
from app.core.tables import Comparison, ComparisonStatus, EvaluationRow, File, Job, JobStatus, Tenant, utcnow
from tests.conftest import DATASETS, MODEL_DIR, REDIS_URL, TEST_ENV
from tests.helpers import factories
from tests.helpers.factories import job_spec, make_file_row
from tests.helpers.generation import forward_greedy

CMP = "/v1/comparisons"
JOBS_DIR = Path(TEST_ENV["FTAAS_ARTIFACTS_DIR"]) / "jobs"
SRC = str(MODEL_DIR)


def assert_error(response, status: int, *, param: str | None, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param, error
    assert error["message"] and error["type"]
    if code is not None:
        assert error["code"] == code, error
    return error


def make_file(session, tenant: Tenant, shape: str = "prompt_completion") -> File:
    return make_file_row(session, tenant, shape=shape, num_rows=10, token_estimate=50)


def make_job(
    session, tenant: Tenant, file: File, *, status: JobStatus = JobStatus.succeeded, adapter_type: str = "lora"
) -> Job:
    """A job with an adapter of this type; a succeeded one has its model name and its archive's name."""
    job = factories.make_job(
        session, tenant, file, spec=job_spec(adapter={"type": adapter_type}), status=status, commit=False
    )
    if status == JobStatus.succeeded:
        job.fine_tuned_model = f"ft:stories260k:{tenant.id}::{job.id}"
        job.finished_at = utcnow()
        job.adapter_name = f"{job.id}/adapter.tar.gz"
    session.flush()
    return job


# ================================================================== API


@pytest.fixture
def acme(db_session, auth) -> Tenant:
    return db_session.scalar(select(Tenant).where(Tenant.name == "acme"))


@pytest.fixture
def globex(db_session, other_auth) -> Tenant:
    return db_session.scalar(select(Tenant).where(Tenant.name == "globex"))


@pytest.fixture
def train_file(db_session, acme) -> File:
    return make_file(db_session, acme)


@pytest.fixture
def job(db_session, acme, train_file) -> Job:
    row = make_job(db_session, acme, train_file)
    db_session.commit()
    return row


def create(client, auth, **body):
    return client.post(CMP, headers=auth, json=body)


def test_create_with_prompts_then_get_and_enqueue(client, auth, db_session, job):
    r = create(client, auth, job_ids=[job.id], prompts=["Once upon a time", "Q: two plus two?\nA: "])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "comparison" and body["id"].startswith("cmp-")
    assert body["status"] == "queued"
    assert body["job_ids"] == [job.id]
    assert (body["prompt_source"], body["held_out_job_id"], body["num_prompts"]) == ("prompts", None, 2)
    assert body["max_new_tokens"] == 64  # the default
    assert body["results"] is None and body["error"] is None and body["finished_at"] is None

    row = db_session.get(Comparison, body["id"])
    assert row.prompts == ["Once upon a time", "Q: two plus two?\nA: "]
    assert row.status == ComparisonStatus.queued and row.tenant_id == job.tenant_id

    assert client.get(f"{CMP}/{body['id']}", headers=auth).json() == body

    # Only the id travels, by task name, on the training queue.
    queue = redis.Redis.from_url(REDIS_URL).lrange(TEST_ENV["FTAAS_QUEUE_NAME"], 0, -1)
    mine = [json.loads(m)["headers"] for m in queue]
    mine = [h for h in mine if body["id"] in h.get("argsrepr", "")]
    assert len(mine) == 1
    assert mine[0]["task"] == "ftaas.compare"
    assert mine[0]["argsrepr"] == repr([body["id"]])


def test_create_from_held_out_rows(client, auth, db_session, acme, train_file, job):
    # Rows out of order, one without a reference: the first N rows with a reference, by row_index.
    for index, reference in ((2, "ref 2"), (0, "ref 0"), (1, ""), (3, "ref 3")):
        db_session.add(EvaluationRow(job_id=job.id, row_index=index, prompt=f"prompt {index}", reference=reference))
    second = make_job(db_session, acme, train_file, adapter_type="prompt_tuning")
    db_session.commit()

    r = create(client, auth, job_ids=[job.id, second.id], held_out_rows=2, max_new_tokens=16)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["prompt_source"], body["held_out_job_id"], body["num_prompts"]) == ("held_out_rows", job.id, 2)
    assert body["max_new_tokens"] == 16
    row = db_session.get(Comparison, body["id"])
    assert row.prompts == ["prompt 0", "prompt 2"]
    assert row.results["references"] == ["ref 0", "ref 2"]

    # Fewer rows than asked: the ones there are.
    assert create(client, auth, job_ids=[job.id], held_out_rows=20).json()["num_prompts"] == 3
    # A job without evaluation rows (raw text, say) has none to give.
    r = create(client, auth, job_ids=[second.id, job.id], held_out_rows=2)
    assert_error(r, 409, param="held_out_rows", code="no_held_out_rows")


def test_succeeded_comparison_is_shown_side_by_side(client, auth, db_session, acme, job):
    row = Comparison(
        tenant_id=acme.id,
        job_ids=[job.id],
        prompts=["p0", "p1"],
        max_new_tokens=8,
        status=ComparisonStatus.succeeded,
        finished_at=utcnow(),
        results={
            "source": "held_out_rows",
            "held_out_job_id": job.id,
            "references": ["r0", "r1"],
            "base": [{"model": "stories260k", "quantized": False, "outputs": ["b0", "b1"]}],
            "jobs": [
                {
                    "job_id": job.id,
                    "model": "stories260k",
                    "fine_tuned_model": job.fine_tuned_model,
                    "adapter_type": "lora",
                    "outputs": ["j0", "j1"],
                }
            ],
        },
    )
    db_session.add(row)
    db_session.commit()
    body = client.get(f"{CMP}/{row.id}", headers=auth).json()
    assert body["status"] == "succeeded" and isinstance(body["finished_at"], int)
    assert body["results"][1] == {
        "index": 1,
        "prompt": "p1",
        "reference": "r1",
        "outputs": [
            {"subject": "base", "model": "stories260k", "quantized": False, "text": "b1"},
            {
                "subject": "job",
                "job_id": job.id,
                "model": "stories260k",
                "fine_tuned_model": job.fine_tuned_model,
                "adapter_type": "lora",
                "text": "j1",
            },
        ],
    }
    assert [e["prompt"] for e in body["results"]] == ["p0", "p1"]

    row.status, row.error = ComparisonStatus.failed, {"code": "adapter_missing", "message": "gone", "param": None}
    db_session.commit()
    body = client.get(f"{CMP}/{row.id}", headers=auth).json()
    assert body["status"] == "failed" and body["results"] is None
    assert body["error"] == {"code": "adapter_missing", "message": "gone", "param": None}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"prompts": ["p"] * 21}, 400, "prompts"),  # too many prompts
        ({"prompts": []}, 400, "prompts"),
        ({"prompts": ["ok", "ok", "", "ok"]}, 400, "prompts[2]"),
        ({"prompts": ["ok", "x" * 8001]}, 400, "prompts[1]"),
        ({"prompts": ["ok", 3]}, 400, "prompts.1"),  # a type error, from the schema validation
        ({}, 400, "prompts"),  # neither prompts nor held_out_rows
        ({"prompts": ["p"], "held_out_rows": 2}, 400, "held_out_rows"),  # both
        ({"held_out_rows": 0}, 400, "held_out_rows"),
        ({"held_out_rows": 21}, 400, "held_out_rows"),
        ({"prompts": ["p"], "max_new_tokens": 0}, 400, "max_new_tokens"),
        ({"prompts": ["p"], "max_new_tokens": 1025}, 400, "max_new_tokens"),
        ({"prompts": ["p"], "temperature": 0.7}, 400, "temperature"),  # unknown fields are errors
        ({"prompts": ["p"], "job_ids": []}, 400, "job_ids"),
        ({"prompts": ["p"], "job_ids": "JOBS9"}, 400, "job_ids"),  # more than 8 jobs
    ],
)
def test_invalid_requests_name_the_field(client, auth, db_session, job, body, status, param):
    body = {"job_ids": [job.id], **body}
    if body["job_ids"] == "JOBS9":
        body["job_ids"] = [job.id] + [f"ftjob-{i}" for i in range(8)]
    assert_error(create(client, auth, **body), status, param=param)
    assert db_session.scalar(select(func.count()).select_from(Comparison)) == 0  # nothing was created


@pytest.mark.parametrize("status", [JobStatus.queued, JobStatus.running, JobStatus.failed, JobStatus.cancelled])
def test_a_job_that_has_not_succeeded_is_409(client, auth, db_session, acme, train_file, job, status):
    pending = make_job(db_session, acme, train_file, status=status)
    db_session.commit()
    r = create(client, auth, job_ids=[job.id, pending.id], prompts=["p"])
    assert_error(r, 409, param="job_ids[1]", code="job_not_ready")


def test_a_succeeded_job_without_adapter_is_409(client, auth, db_session, job):
    job.adapter_name = None
    db_session.commit()
    assert_error(
        create(client, auth, job_ids=[job.id], prompts=["p"]), 409, param="job_ids[0]", code="adapter_not_ready"
    )


def test_duplicate_and_unknown_jobs(client, auth, job):
    assert_error(create(client, auth, job_ids=[job.id, job.id], prompts=["p"]), 400, param="job_ids[1]")
    r = create(client, auth, job_ids=[job.id, "ftjob-nope"], prompts=["p"])
    assert_error(r, 404, param="job_ids[1]", code="job_not_found")


def test_another_tenants_job_is_404(client, auth, other_auth, db_session, globex, job):
    theirs = make_job(db_session, globex, make_file(db_session, globex))
    db_session.commit()
    r = create(client, auth, job_ids=[job.id, theirs.id], prompts=["p"])
    assert_error(r, 404, param="job_ids[1]", code="job_not_found")
    # The owner may compare it; acme's job is just as unknown to globex.
    assert create(client, other_auth, job_ids=[theirs.id], prompts=["p"]).status_code == 200
    assert_error(create(client, other_auth, job_ids=[job.id], prompts=["p"]), 404, param="job_ids[0]")


def test_another_tenants_comparison_is_404(client, auth, other_auth, job):
    cmp_id = create(client, auth, job_ids=[job.id], prompts=["p"]).json()["id"]
    assert client.get(f"{CMP}/{cmp_id}", headers=auth).status_code == 200
    assert_error(client.get(f"{CMP}/{cmp_id}", headers=other_auth), 404, param="comparison_id")
    assert client.get(CMP, headers=other_auth).json()["data"] == []
    assert_error(client.get(f"{CMP}/cmp-nope", headers=auth), 404, param="comparison_id")
    assert_error(client.get(CMP), 401, param=None, code="missing_api_key")


def test_list_is_paged_newest_first(client, auth, job):
    a, b, c = (create(client, auth, job_ids=[job.id], prompts=[f"p{i}"]).json()["id"] for i in range(3))

    def ids(**params):
        r = client.get(CMP, headers=auth, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list"
        return [x["id"] for x in body["data"]], body["has_more"], body["first_id"], body["last_id"]

    assert ids() == ([c, b, a], False, c, a)
    assert ids(limit=2) == ([c, b], True, c, b)
    assert ids(limit=2, after=b) == ([a], False, a, a)
    assert ids(after=a) == ([], False, None, None)
    assert ids(after="cmp-unknown") == ([], False, None, None)
    assert_error(client.get(CMP, headers=auth, params={"limit": 0}), 400, param="limit")


def test_a_broker_outage_fails_the_comparison_instead_of_leaving_it_queued(client, auth, job, monkeypatch):
    import app.comparisons.service as service

    monkeypatch.setattr(service, "enqueue_comparison", lambda _id: False)
    body = create(client, auth, job_ids=[job.id], prompts=["p"]).json()
    assert body["status"] == "failed" and body["error"]["code"] == "queue_unavailable"


def test_the_worker_registers_the_task_on_the_training_queue():
    from app.core.celery_app import COMPARE_TASK
    from worker.tasks import celery

    celery.loader.import_default_modules()  # what `celery -A worker.tasks worker` does at start-up
    assert COMPARE_TASK == "ftaas.compare" and COMPARE_TASK in celery.tasks
    assert celery.amqp.router.route({}, COMPARE_TASK)["queue"].name == TEST_ENV["FTAAS_QUEUE_NAME"]


# ================================================================== prompt formatting (tokenizer only)


@pytest.fixture(scope="module")
def tok():
    from worker.training.modeling import load_tokenizer

    return load_tokenizer(SRC)


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
    assert chat.prompt == "### User:\nhi there\n\n### Assistant:\n"  # no chat template: the training headers
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
        file = make_file(s, tenant)
        jobs = {
            kind: make_job(s, tenant, file, adapter_type=kind) for kind in ("lora", "prompt_tuning", "full", "qlora")
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
        gone = make_job(s, tenant, s.get(File, s.get(Job, trained["jobs"]["lora"]).training_file_id))
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
        gone = make_job(s, tenant, s.get(File, s.get(Job, trained["jobs"]["lora"]).training_file_id))
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

"""The official `openai` package (pinned in the test extra), unmodified, against a live ftaas: only base_url and
api_key change. Files, jobs (ftaas extensions through extra_body), paging, events, checkpoints, models, pause
and resume, result files, and every error as the client's own typed exception with `param` naming the field.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time

import openai
import pytest
from openai import OpenAI

from tests.conftest import DATASETS
from tests.helpers.e2e_service import running_service, worker_logs

pytestmark = pytest.mark.e2e

# 500 rows, batch 8: 63 steps, a checkpoint every 2 s, long enough to be paused half way on 2 cores
EXTENSIONS = {
    "adapter": {"type": "lora", "r": 8, "target_modules": "all-linear"},
    "training": {"learning_rate": 0.005},
    "evaluation": {"metrics": ["rouge", "perplexity", "token_accuracy"], "max_rows": 20, "max_new_tokens": 32},
}
SUPERVISED = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}}


def chat_jsonl(rows: list[str]) -> bytes:
    """WikiSQL rows ("question...\\nA: SELECT ...") in OpenAI's chat format, as a user of OpenAI uploads them."""
    lines = []
    for row in rows:
        question, sql = json.loads(row)["text"].split("\nA: ", 1)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": sql}]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


def wait_until(fetch, done, timeout: float, what: str, logs=None):
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value):
            return value
        assert time.monotonic() < deadline, f"{what}: still {value}\n" + (logs() if logs else "")
        time.sleep(0.3)


def test_the_official_openai_client_works_unmodified():
    env = {"FTAAS_CHECKPOINT_EVERY_S": "2", "FTAAS_MAX_ACTIVE_JOBS_PER_TENANT": "3", "FTAAS_RATE_LIMIT_PER_MINUTE": "0"}
    with running_service(extra_env=env) as svc:
        # max_retries=0: the client would otherwise retry a 429 itself, after the Retry-After we send
        client = OpenAI(base_url=f"{svc['base']}/v1", api_key=svc["key"], max_retries=0, timeout=60)
        logs = lambda: worker_logs(svc)  # noqa: E731
        source = (DATASETS / "wikisql" / "train.jsonl").read_text().splitlines()
        train_bytes = chat_jsonl(source[:500])
        valid_bytes = chat_jsonl((DATASETS / "wikisql" / "test.jsonl").read_text().splitlines()[:40])

        # ---- files: create, retrieve, list, content, delete
        train = client.files.create(file=("train.jsonl", train_bytes), purpose="fine-tune")
        valid = client.files.create(file=("valid.jsonl", valid_bytes), purpose="fine-tune")
        scratch = client.files.create(file=("scratch.jsonl", valid_bytes), purpose="fine-tune")
        assert train.object == "file" and train.bytes == len(train_bytes) and train.purpose == "fine-tune"
        assert client.files.retrieve(train.id).filename == "train.jsonl"
        listed = [f.id for f in client.files.list(purpose="fine-tune")]
        assert {train.id, valid.id, scratch.id} <= set(listed)
        assert client.files.content(valid.id).read() == valid_bytes
        deleted = client.files.delete(scratch.id)
        assert deleted.deleted and deleted.id == scratch.id
        with pytest.raises(openai.NotFoundError) as err:
            client.files.retrieve(scratch.id)
        assert err.value.param == "file_id"
        with pytest.raises(openai.UnprocessableEntityError) as err:  # the second line is not JSON: named
            client.files.create(file=("bad.jsonl", train_bytes.split(b"\n")[0] + b"\n{nope\n"), purpose="fine-tune")
        assert err.value.param == "file" and "line 2" in err.value.message

        # ---- errors as typed exceptions, with param
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"{svc['base']}/v1", api_key="sk-not-a-key", max_retries=0).models.list()
        with pytest.raises(openai.NotFoundError) as err:
            client.fine_tuning.jobs.retrieve("ftjob-does-not-exist")
        assert err.value.param == "job_id" and err.value.status_code == 404
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(
                model="stories260k", training_file=train.id, extra_body={"adapter": {"type": "lora", "r": 0}}
            )
        assert err.value.param == "adapter.r", err.value.body
        with pytest.raises(openai.BadRequestError) as err:
            client.fine_tuning.jobs.create(model="gpt-17", training_file=train.id)
        assert err.value.param == "model"
        with pytest.raises(openai.NotFoundError) as err:
            client.fine_tuning.jobs.create(model="stories260k", training_file="file-nope")
        assert err.value.param == "training_file"

        # ---- jobs: create with the extensions in extra_body, seed, suffix, metadata
        job = client.fine_tuning.jobs.create(
            model="stories260k",
            training_file=train.id,
            validation_file=valid.id,
            suffix="sql",
            seed=42,
            metadata={"team": "data", "run": "main"},
            method=SUPERVISED,
            extra_body=EXTENSIONS,
        )
        assert job.object == "fine_tuning.job" and job.status == "queued" and job.seed == 42
        assert job.metadata == {"team": "data", "run": "main"} and job.model == "stories260k"
        assert job.hyperparameters.n_epochs == 1 and job.hyperparameters.batch_size == 8
        assert job.method.type == "supervised"
        extra = job.model_extra  # the ftaas fields reach the client as extra attributes
        assert extra["adapter"]["r"] == 8 and extra["evaluation"]["max_rows"] == 20
        others = [
            client.fine_tuning.jobs.create(
                model="stories260k",
                training_file=train.id,
                metadata={"team": "data", "run": f"other-{i}"},
                method=SUPERVISED,
                extra_body=EXTENSIONS,
            )
            for i in range(2)
        ]
        # a fourth active job is past FTAAS_MAX_ACTIVE_JOBS_PER_TENANT=3
        with pytest.raises(openai.RateLimitError) as err:
            client.fine_tuning.jobs.create(model="stories260k", training_file=train.id)
        assert err.value.code == "too_many_active_jobs"
        assert err.value.response.headers["retry-after"]

        # ---- list: pages of 2 through `after`, metadata filters
        first = client.fine_tuning.jobs.list(limit=2)
        assert len(first.data) == 2 and first.has_more
        every = [j.id for j in client.fine_tuning.jobs.list(limit=2)]  # the client follows `after` itself
        assert every == [others[1].id, others[0].id, job.id]
        second = client.fine_tuning.jobs.list(limit=2, after=first.data[-1].id)
        assert [j.id for j in second.data] == [job.id] and not second.has_more
        assert [j.id for j in client.fine_tuning.jobs.list(metadata={"run": "main"})] == [job.id]
        assert len(client.fine_tuning.jobs.list(metadata={"team": "data"}).data) == 3
        assert client.fine_tuning.jobs.list(metadata={"team": "data", "run": "nope"}).data == []

        # ---- a queued job paused never starts; cancel a queued one
        paused_queued = client.fine_tuning.jobs.pause(others[0].id)
        assert paused_queued.status == "paused"
        cancelled = client.fine_tuning.jobs.cancel(others[1].id)
        assert cancelled.status == "cancelled"
        with pytest.raises(openai.ConflictError) as err:
            client.fine_tuning.jobs.cancel(others[1].id)
        assert err.value.code == "job_not_cancellable"
        with pytest.raises(openai.ConflictError):
            client.fine_tuning.jobs.resume(job.id)  # not paused

        # ---- running: progress, an estimated finish, then pause half way
        def training():
            j = client.fine_tuning.jobs.retrieve(job.id)
            p = j.model_extra["progress"]
            return j, p

        j, p = wait_until(
            training,
            lambda jp: (
                jp[0].status == "running"
                and jp[1]["total_steps"]
                and jp[1]["step"] >= 0.4 * jp[1]["total_steps"]
                and client.fine_tuning.jobs.checkpoints.list(job.id).data
            ),
            300,
            "job did not train",
            logs,
        )
        assert j.estimated_finish and j.estimated_finish >= int(time.time()) - 5, j
        t_pause = time.monotonic()
        pausing = client.fine_tuning.jobs.pause(job.id)
        assert pausing.status in ("running", "paused")
        paused = wait_until(
            lambda: client.fine_tuning.jobs.retrieve(job.id), lambda x: x.status == "paused", 60, "pause", logs
        )
        pause_s = time.monotonic() - t_pause
        assert paused.model_extra["progress"]["phase"] == "paused" and paused.estimated_finish is None
        paused_step = max(c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=100))
        # the GPU (the single worker) is free: the other paused job, resumed now, starts on it
        resumed_other = client.fine_tuning.jobs.resume(others[0].id)
        assert resumed_other.status == "queued"
        wait_until(
            lambda: client.fine_tuning.jobs.retrieve(others[0].id),
            lambda x: x.status == "running",
            120,
            "the worker did not take the next job",
            logs,
        )
        assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"  # nothing runs a paused job
        client.fine_tuning.jobs.cancel(others[0].id)
        t_resume = time.monotonic()
        assert client.fine_tuning.jobs.resume(job.id).status == "queued"

        done = wait_until(
            lambda: client.fine_tuning.jobs.retrieve(job.id),
            lambda x: x.status in ("succeeded", "failed", "cancelled"),
            600,
            "job did not end",
            logs,
        )
        total = time.monotonic() - t_resume
        assert done.status == "succeeded", (done.error, logs())

        # ---- events (paged by the client), checkpoints, the finished job's fields
        events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=5)]  # auto-paged
        resumed = (re.search(r"^Resuming from the checkpoint of step (\d+)", e) for e in events)
        resumed_at = [int(m.group(1)) for m in resumed if m]
        assert resumed_at == [paused_step], events
        assert any(e.startswith("Job paused with its checkpoint of step") for e in events)
        page = client.fine_tuning.jobs.list_events(job.id, limit=3)
        assert len(page.data) == 3 and page.has_more and page.data[0].object == "fine_tuning.job.event"
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id, limit=100).data
        assert checkpoints and all(c.fine_tuning_job_id == job.id for c in checkpoints)
        assert checkpoints[0].fine_tuned_model_checkpoint.startswith(done.fine_tuned_model)
        assert done.fine_tuned_model == f"ft:stories260k:{done.organization_id}:sql:{job.id}"
        assert done.trained_tokens and done.trained_tokens > 0
        assert done.finished_at and done.estimated_finish is None

        # the result file: step metrics as CSV, through files.content like any file
        (result_id,) = done.result_files
        result = client.files.retrieve(result_id)
        assert result.purpose == "fine-tune-results" and result.filename == "step_metrics.csv"
        table = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
        steps = [int(r["step"]) for r in table]
        assert steps == sorted(set(steps)) and steps[-1] == done.model_extra["progress"]["total_steps"]
        assert all(r["train_loss"] for r in table if int(r["step"]) % 10 == 0)
        assert table[-1]["valid_loss"] and table[-1]["valid_mean_token_accuracy"] and table[-1]["valid_rougeL"]
        with pytest.raises(openai.BadRequestError) as err:  # results are not training data
            client.fine_tuning.jobs.create(model="stories260k", training_file=result_id)
        assert err.value.param == "training_file"

        # ---- models: the base models and the tenant's fine-tuned ones
        models = {m.id: m for m in client.models.list()}
        assert "stories260k" in models and done.fine_tuned_model in models
        assert client.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model

    print(
        f"\n[openai] openai {openai.__version__}: files, jobs (extra_body), paging, metadata filter, events, "
        f"checkpoints, models, pause/resume and 6 typed errors passed; paused at step {paused_step} "
        f"{pause_s:.1f}s after POST .../pause, resumed at step {resumed_at[0]}, succeeded {total:.0f}s after resume; "
        f"result file {len(table)} steps"
    )

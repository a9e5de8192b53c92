"""The training child's run() in-process against the test database, without Celery: what a finished job
leaves in the database and on disk (per-row evaluation, evaluated checkpoints with archives, cost figures)."""

from __future__ import annotations

import json
import math
import tarfile

import pytest
from huggingface_hub import ModelCard
from sqlalchemy import select

from tests.conftest import MODEL_DIR
from tests.helpers.child import run_job, sql_rows, stored


@pytest.fixture(autouse=True)
def _no_timed_checkpoints(monkeypatch):
    """Only epoch ends and evaluations checkpoint, however slow the machine: the steps are then known."""
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "checkpoint_every_s", 3600.0)


def check_recomputable(metrics: dict, scores: list[dict | None]) -> None:
    tf = [r for r in scores if r and "nll" in r]
    tokens = sum(r["loss_tokens"] for r in tf)
    assert metrics["eval_loss"] == sum(r["nll"] for r in tf) / tokens
    assert metrics["perplexity"] == math.exp(min(metrics["eval_loss"], 50.0))
    assert metrics["token_accuracy"] == sum(r["correct_tokens"] for r in tf) / tokens
    for key in ("rouge1", "rougeL"):
        have = [r[key] for r in scores if r and key in r]
        if key in metrics:
            assert metrics[key] == sum(have) / len(have)
        else:
            assert not have


def test_child_lora_job_stores_rows_checkpoints_and_costs(database):
    from app.core.settings import get_settings
    from worker.evaluation.artifacts import sha256_of

    body = {
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}},
        "adapter": {"type": "lora", "r": 4, "dropout": 0.0},
        "training": {"learning_rate": 5e-3},
        "evaluation": {
            "metrics": ["rouge", "perplexity", "token_accuracy"],
            "max_rows": 6,
            "max_new_tokens": 12,
            "eval_every_steps": 4,
        },
    }
    job_id = run_job(body, sql_rows("train.jsonl", 40), sql_rows("test.jsonl", 10), "\nA: ")
    job, evals, rows, ckpts, events = stored(job_id)
    assert job.status == "succeeded", (job.error, events)
    assert job.step == 10 and job.epoch == 2.0 and job.trained_tokens > 0
    assert 0 < job.train_seconds and job.peak_memory_bytes > 10 * 2**20
    assert [(c.step, c.evaluated) for c in ckpts] == [(4, True), (5, False), (8, True), (10, True)]
    jobs_dir = get_settings().artifacts_dir / "jobs"
    for c in ckpts:
        if c.evaluated:  # each evaluated step has its own archive, with its own card
            assert {"eval_loss", "rougeL", "train_loss"} <= set(c.metrics)
            path = jobs_dir / c.adapter_name
            assert path.is_file() and sha256_of(path) == c.adapter_sha256 and path.stat().st_size == c.adapter_bytes
            with tarfile.open(path) as tar:
                card = tar.extractfile("adapter/README.md").read().decode()
                assert "adapter/adapter_model.safetensors" in tar.getnames()
            assert f"step {c.step}" in card
        else:
            assert c.adapter_name is None
    assert [r.row_index for r in rows] == list(range(6))
    assert all(r.reference and r.base_output is not None and r.tuned_output is not None for r in rows)
    for subject, column in (("base", "base_scores"), ("tuned", "tuned_scores")):
        assert evals[subject].num_rows == 6
        check_recomputable(evals[subject].metrics, [getattr(r, column) for r in rows])
    assert any(m.startswith("Step 4 (epoch 0.80) evaluated: eval_loss") for m in events)
    check_first_step_event(job_id)


def check_first_step_event(job_id: str) -> None:
    """One first-step event, its parts (process, data, model, ...) adding up to at most the claim-to-step time."""
    from app.core.db import get_sessionmaker
    from app.core.tables import JobEvent

    with get_sessionmaker()() as s:
        found = [
            e for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)) if "after the claim" in e.message
        ]
    assert len(found) == 1, [e.message for e in found]
    data = found[0].data
    parts = {k: v for k, v in data.items() if k != "claimed_to_first_step_s"}
    assert {"process_s", "imports_s", "tokens_s", "model_s", "adapter_s", "first_step_s"} <= set(parts), data
    assert all(v >= 0 for v in parts.values()), data
    assert 0 < sum(parts.values()) <= data["claimed_to_first_step_s"] + 0.01, data
    assert found[0].message.startswith(f"First step {data['claimed_to_first_step_s']:.1f}s after the claim: process ")


def test_child_full_job_on_raw_text(database):
    """Full fine-tuning on raw text: every row stored (text as prompt, no generation), a full model shipped."""
    from app.core.settings import get_settings

    body = {
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}},
        "adapter": {"type": "full"},
        "training": {"learning_rate": 1e-3, "validation_split": 0.2},
        "evaluation": {"max_rows": 8},
    }
    job_id = run_job(body, sql_rows("train.jsonl", 30), None, None)
    job, evals, rows, ckpts, events = stored(job_id)
    assert job.status == "succeeded", (job.error, events)
    assert job.trainable_params == job.total_params > 0
    assert [(c.step, c.evaluated) for c in ckpts] == [(3, True), (6, True)]
    assert len(rows) == 6 and all(r.reference == "" and r.base_output is None for r in rows)
    assert all(r.prompt and "\nA: " in r.prompt for r in rows)
    check_recomputable(evals["tuned"].metrics, [r.tuned_scores for r in rows])
    assert evals["tuned"].details["skipped"]["rouge"].startswith("raw-text")
    with tarfile.open(get_settings().artifacts_dir / "jobs" / job.adapter_name) as tar:
        names = set(tar.getnames())
        card = tar.extractfile("adapter/README.md").read().decode()
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert {"adapter/model.safetensors", "adapter/config.json"} <= names
    assert "PeftModel" not in card
    # a whole model that loads anywhere: its config and card name the base by its public name, not by path
    assert not any(str(MODEL_DIR).encode() in data for data in files.values())
    assert json.loads(files["adapter/config.json"]).get("_name_or_path", "stories260k") == "stories260k"
    data = ModelCard(card).data
    assert (data.base_model, data.library_name, data.tags) == ("stories260k", "transformers", ["ftaas", "full"])


def test_child_refuses_full_finetune_of_a_large_model(database, monkeypatch):
    from app.core.settings import get_settings
    from worker.child.job_context import UserError

    monkeypatch.setattr(get_settings(), "full_finetune_max_params", 1000)  # stories260k has ~260k
    body = {"adapter": {"type": "full"}, "evaluation": {"max_rows": 2}}
    with pytest.raises(UserError) as err:
        run_job(body, sql_rows("train.jsonl", 10), None, "\nA: ")
    assert err.value.code == "model_too_large_for_full"


def test_child_resolves_auto_adapter_and_micro_batch_and_records_why(database):
    """On a machine without a GPU, adapter auto is LoRA and micro_batch_size auto is 8 (one micro-batch per
    step, batch_size auto too); the choices are written into the job's spec and explained in events."""
    body = {
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        "adapter": {"type": "auto"},
        "training": {"micro_batch_size": "auto"},
        "evaluation": {"max_rows": 4, "max_new_tokens": 8},
    }
    job_id = run_job(body, sql_rows("train.jsonl", 20), None, "\nA: ")
    job, _, _, ckpts, events = stored(job_id)
    assert job.status == "succeeded", (job.error, events)
    assert job.spec["adapter"]["type"] == "lora"
    assert job.spec["training"]["micro_batch_size"] == 8 and job.spec["hyperparameters"]["batch_size"] == 8
    assert any(e.startswith("adapter auto: lora (no GPU") for e in events)
    assert any(e.startswith("micro_batch_size auto: no GPU") for e in events)
    assert ckpts[-1].step == 3  # 18 training rows (2 held out) in micro-batches of 8: 3 steps


def test_a_new_phase_is_written_at_once_a_repeated_one_is_throttled(database, monkeypatch):
    """A phase that began within progress_every_s of the last write still shows: training used to show as
    loading_model throughout when the model loaded fast."""
    from app.core.db import get_sessionmaker
    from app.core.settings import get_settings
    from app.core.tables import Job
    from tests.helpers.child import running_job_row
    from worker.child.job_context import JobContext

    monkeypatch.setattr(get_settings(), "progress_every_s", 3600.0)
    job_id = running_job_row({}, [{"prompt": "a", "completion": "b"}] * 4, None, None)
    ctx = JobContext(job_id, 1)

    def shown():
        with get_sessionmaker()() as s:
            job = s.get(Job, job_id)
            return job.phase, job.step

    ctx.progress({"phase": "loading_model"}, force=True)
    ctx.progress({"phase": "training", "step": 0})
    assert shown() == ("training", 0)
    ctx.progress({"phase": "training", "step": 1})  # the same phase: throttled
    ctx.progress({"step": 2})
    assert shown() == ("training", 0)


def test_a_new_phase_the_database_missed_goes_with_the_next_write(database, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from app.core.db import get_sessionmaker
    from app.core.settings import get_settings
    from app.core.tables import Job
    from tests.helpers.child import running_job_row
    from worker.child import job_context
    from worker.child.job_context import JobContext

    monkeypatch.setattr(get_settings(), "progress_every_s", 0.0)
    job_id = running_job_row({}, [{"prompt": "a", "completion": "b"}] * 4, None, None)
    ctx = JobContext(job_id, 1)
    ctx.progress({"phase": "loading_model"}, force=True)
    real, calls = job_context.update_job, []

    def away_once(*args, **values):
        calls.append(values)
        if len(calls) == 1:
            raise OperationalError("UPDATE", {}, Exception("the database restarts"))
        return real(*args, **values)

    monkeypatch.setattr(job_context, "update_job", away_once)
    ctx.progress({"phase": "training", "step": 0})  # lost: the database is away
    ctx.progress({"step": 1})  # no phase of its own: the missed one goes with it
    with get_sessionmaker()() as s:
        job = s.get(Job, job_id)
        assert (job.phase, job.step) == ("training", 1)
    assert calls[1] == {"step": 1, "phase": "training"}

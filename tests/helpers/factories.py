"""Test data through small factories: a job spec as the API resolves it, and the database rows (file, job,
webhook endpoint) that tests would otherwise build by hand, each with the defaults most tests want and
overrides for the rest. tests.conftest (the paths) is imported inside the functions, since it imports this
module at its top."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from app.core.job_spec import JobCreate, JobSpec, resolve_spec
from app.core.outbox import EVENT_TYPES
from app.core.tables import Evaluation, EvaluationRow, File, Job, JobStatus, WebhookEndpoint, new_id, utcnow
from app.evaluation import stats
from app.webhooks.signing import new_signing_secret


def job_spec(
    adapter: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    **hyperparameters: Any,
) -> JobSpec:
    """The resolved spec of a job with these settings, through the API's own validation (JobCreate) and
    resolution (resolve_spec), as the worker reads it."""
    body = JobCreate(
        model="stories260k",
        training_file="file-test",
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        adapter=adapter or {},
        training=training or {},
        evaluation=evaluation or {},
    )
    return resolve_spec(body)


def make_file_row(session, tenant, **over):
    """A processed training file row (its content is never read by the tests that use it)."""
    values = {
        "id": new_id("file"),
        "tenant_id": tenant.id,
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "bytes": 100,
        "sha256": "0" * 64,
        "format": "jsonl",
        "shape": "prompt_completion",
        "num_rows": 600,
        "token_estimate": 500,
        **over,
    }
    row = File(**{"storage_name": values["id"], **values})
    session.add(row)
    session.commit()
    return row


def make_job(session, tenant, file, *, spec: JobSpec | dict | None = None, commit: bool = True, **over) -> Job:
    """A job row on `file` of `tenant`: the tiny real model with the default spec unless told otherwise, any
    other column from `over`. commit=False flushes only: the row has its id, the caller's transaction goes on."""
    from tests.conftest import MODEL_DIR

    values = {
        "tenant_id": tenant.id,
        "model": "stories260k",
        "model_source": str(MODEL_DIR),
        "training_file_id": file.id,
        "seed": 1,
        "spec": spec if isinstance(spec, dict) else (spec or job_spec()).stored(),
        **over,
    }
    job = Job(**values)
    session.add(job)
    if commit:
        session.commit()
    else:
        session.flush()
    return job


def finished_job(
    db_session,
    tenant,
    file,
    *,
    status: JobStatus = JobStatus.succeeded,
    base: dict | None = None,
    tuned: dict | None = None,
    rows: int = 0,
    num_samples: int = 3,
    adapter_type: str = "lora",
    skipped: dict | None = None,
) -> Job:
    """A job as a worker leaves it (succeeded unless told otherwise), with its base and tuned evaluations and
    `rows` evaluation rows when given."""
    spec = job_spec(adapter={"type": adapter_type}, evaluation={"num_samples": num_samples})
    job = make_job(db_session, tenant, file, spec=spec, status=status, commit=False)
    if status == JobStatus.succeeded:
        job.fine_tuned_model = f"ft:stories260k:{tenant.name}::{job.id}"
        job.finished_at = utcnow()
    for subject, metrics in (("base", base), ("tuned", tuned)):
        if metrics is not None:
            details = {"skipped": skipped} if skipped else None
            db_session.add(
                Evaluation(job_id=job.id, subject=subject, metrics=metrics, num_rows=max(rows, 1), details=details)
            )
    for i in range(rows):
        db_session.add(
            EvaluationRow(
                job_id=job.id,
                row_index=i,
                prompt=f"prompt {i}",
                reference=f"ref {i}",
                base_output=f"base {i}",
                tuned_output=f"tuned {i}",
                base_scores={"rougeL": 0.1},
                tuned_scores={"rougeL": 0.5},
            )
        )
    db_session.commit()
    return job


def adapter_job(session, tenant, file, *, status: JobStatus = JobStatus.succeeded, adapter_type: str = "lora") -> Job:
    """A job with an adapter of this type, as a comparison reads it: a succeeded one has its fine-tuned model's
    name and its archive's name (the archive itself is not written)."""
    job = make_job(session, tenant, file, spec=job_spec(adapter={"type": adapter_type}), status=status, commit=False)
    if status == JobStatus.succeeded:
        job.fine_tuned_model = f"ft:stories260k:{tenant.id}::{job.id}"
        job.finished_at = utcnow()
        job.adapter_name = f"{job.id}/adapter.tar.gz"
    session.flush()
    return job


def running_job(session, tenant, file, **over) -> Job:
    """A job claimed by attempt 1 (status running); `over` sets any other column."""
    return make_job(session, tenant, file, status=JobStatus.running, attempt=1, **over)


def store_adapter(db_session, job, data: bytes) -> str:
    """`data` stored as the job's adapter archive, where the worker puts it; returns its sha256."""
    from tests.conftest import TEST_ENV

    path = Path(TEST_ENV["FTAAS_ARTIFACTS_DIR"]) / "jobs" / job.id / "adapter.tar.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    job.adapter_name, job.adapter_sha256, job.adapter_bytes = f"{job.id}/adapter.tar.gz", digest, len(data)
    db_session.commit()
    return digest


N_ROWS = 60  # evaluation rows of a scored job in the leaderboard and sweep tests


def scored_job(
    db_session,
    tenant,
    file,
    tuned_rouge: list[float],
    *,
    adapter: dict | None = None,
    trainable: int = 1000,
    seconds: float = 10.0,
    sweep_id: str | None = None,
    status: JobStatus = JobStatus.succeeded,
    test_rouge: list[float] | None = None,
    **over,
) -> Job:
    """A finished job whose evaluation rows hold per-row ROUGE-L and teacher-forced sums; aggregates are
    written from the same rows, as the worker does. test_rouge: the same on test rows too."""
    job = make_job(
        db_session,
        tenant,
        file,
        spec=job_spec(adapter=adapter or {"type": "lora"}),
        seed=7,
        status=status,
        trainable_params=trainable,
        total_params=100_000,
        train_seconds=seconds,
        trained_tokens=5000,
        peak_memory_bytes=123 << 20,
        sweep_id=sweep_id,
        commit=False,
        **over,
    )
    job.fine_tuned_model = f"ft:stories260k:{tenant.id}::{job.id}"
    if status != JobStatus.succeeded:
        db_session.commit()
        return job
    _store_split(db_session, job, "validation", tuned_rouge)
    if test_rouge is not None:
        _store_split(db_session, job, "test", test_rouge)
    db_session.commit()
    return job


def _store_split(db_session, job: Job, split: str, tuned_rouge: list[float]) -> None:
    base_rows, tuned_rows = [], []
    for i, r in enumerate(tuned_rouge):
        base_scores = {"rougeL": 0.05, "nll": 40.0, "loss_tokens": 10, "correct_tokens": 1}
        tuned_scores = {"rougeL": r, "nll": 10.0 * (1.2 - r), "loss_tokens": 10, "correct_tokens": int(10 * r)}
        base_rows.append(base_scores)
        tuned_rows.append(tuned_scores)
        db_session.add(
            EvaluationRow(
                job_id=job.id,
                split=split,
                row_index=i,
                prompt=f"Q{i}",
                reference=f"SELECT {i}",
                base_output="x",
                tuned_output=f"SELECT {i}",
                base_scores=base_scores,
                tuned_scores=tuned_scores,
            )
        )
    for subject, rows in (("base", base_rows), ("tuned", tuned_rows)):
        metrics = {
            m: stats.value(m, stats.columns(m, rows)) for m in ("rougeL", "eval_loss", "perplexity", "token_accuracy")
        }
        db_session.add(Evaluation(job_id=job.id, subject=subject, split=split, metrics=metrics, num_rows=len(rows)))


def make_endpoint(session, tenant, *, url: str = "http://127.0.0.1:9/hook", event_types=EVENT_TYPES, **over):
    """An endpoint row of the tenant's, straight into the database (its URL is not checked)."""

    row = WebhookEndpoint(
        tenant_id=tenant.id,
        name="hook",
        url=url,
        event_types=list(event_types),
        signing_secret=new_signing_secret(),
        **over,
    )
    session.add(row)
    session.commit()
    return row

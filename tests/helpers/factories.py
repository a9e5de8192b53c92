"""Test data through small factories: a job spec as the API resolves it, and the database rows (file, job)
that tests would otherwise build by hand, each with the defaults most tests want and overrides for the rest."""

from __future__ import annotations

from typing import Any

from app.core.job_spec import JobCreate, JobSpec, resolve_spec


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
    from app.core.tables import File, new_id

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


def make_job(session, tenant, file, *, spec: JobSpec | dict | None = None, commit: bool = True, **over):
    """A job row on `file` of `tenant`: stories260k with the default spec unless told otherwise."""
    from app.core.tables import Job

    values = {
        "tenant_id": tenant.id,
        "model": "stories260k",
        "model_source": "stories260k",
        "training_file_id": file.id,
        "seed": 1,
        "spec": (spec or job_spec()).stored() if not isinstance(spec, dict) else spec,
        **over,
    }
    job = Job(**values)
    session.add(job)
    if commit:
        session.commit()
    return job

"""Comparisons as the API makes them: which jobs and prompts, the row, and its id on the training queue. The
worker's side (claim, generate, finish) runs in worker/child/comparison.py through app/core/job_state.py."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import owned_job
from app.comparisons.schemas import MAX_PROMPT_CHARS, ComparisonCreate
from app.core.errors import ApiError
from app.core.job_state import finish_comparison
from app.core.logs import REQUEST_ID
from app.core.queue import enqueue_comparison
from app.core.tables import Comparison, ComparisonStatus, EvaluationRow, Job, JobStatus, Tenant


def check_prompt_source(body: ComparisonCreate) -> None:
    if body.prompts is None and body.held_out_rows is None:
        raise ApiError(
            400, "Give either 'prompts' or 'held_out_rows'", param="prompts", code="missing_required_parameter"
        )
    if body.prompts is not None and body.held_out_rows is not None:
        raise ApiError(
            400, "Give only one of 'prompts' and 'held_out_rows'", param="held_out_rows", code="invalid_value"
        )
    for i, prompt in enumerate(body.prompts or []):
        if not 1 <= len(prompt) <= MAX_PROMPT_CHARS:
            raise ApiError(
                400,
                f"Invalid value for 'prompts[{i}]': a prompt has 1 to {MAX_PROMPT_CHARS} characters, "
                f"this one {len(prompt)}",
                param=f"prompts[{i}]",
                code="invalid_value",
            )


def comparable_jobs(session: Session, tenant: Tenant, job_ids: list[str]) -> list[Job]:
    jobs: list[Job] = []
    seen: set[str] = set()
    for i, job_id in enumerate(job_ids):
        param = f"job_ids[{i}]"
        if job_id in seen:
            raise ApiError(400, f"Job {job_id} is listed twice", param=param, code="duplicate_job")
        seen.add(job_id)
        job = owned_job(session, tenant, job_id, param=param)  # another tenant's job is a 404
        if job.status != JobStatus.succeeded:
            raise ApiError(
                409, f"Only succeeded jobs can be compared; {job.id} is {job.status}", param=param, code="job_not_ready"
            )
        if not job.adapter_name:
            raise ApiError(409, f"Job {job.id} has no adapter", param=param, code="adapter_not_ready")
        jobs.append(job)
    return jobs


def create(session: Session, tenant: Tenant, body: ComparisonCreate) -> Comparison:
    check_prompt_source(body)
    jobs = comparable_jobs(session, tenant, body.job_ids)
    if body.prompts is not None:
        prompts, stored = list(body.prompts), {"source": "prompts", "held_out_job_id": None, "references": None}
    else:
        first = jobs[0]
        rows = session.scalars(
            select(EvaluationRow)
            .where(EvaluationRow.job_id == first.id, EvaluationRow.split == "validation", EvaluationRow.reference != "")
            .order_by(EvaluationRow.row_index)
            .limit(body.held_out_rows)
        ).all()
        if not rows:
            raise ApiError(
                409,
                f"Job {first.id} has no held-out rows with a reference answer (raw-text data has none)",
                param="held_out_rows",
                code="no_held_out_rows",
            )
        prompts = [r.prompt for r in rows]
        stored = {"source": "held_out_rows", "held_out_job_id": first.id, "references": [r.reference for r in rows]}
    row = Comparison(
        tenant_id=tenant.id,
        job_ids=[j.id for j in jobs],
        prompts=prompts,
        max_new_tokens=body.max_new_tokens,
        status=ComparisonStatus.queued,
        results=stored,  # where the prompts came from; the worker adds the outputs
        request_id=REQUEST_ID.get(),
    )
    session.add(row)
    session.commit()  # commit, then enqueue: the worker must find the row
    if not enqueue_comparison(row.id):
        # Nothing resends a comparison: say so instead of leaving it queued for ever.
        error = {"code": "queue_unavailable", "message": "the task queue is unreachable; try again", "param": None}
        finish_comparison(
            session, row.id, ComparisonStatus.failed, error=error, from_statuses=(ComparisonStatus.queued,)
        )
        session.refresh(row)
    return row

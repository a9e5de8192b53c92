"""/v1/comparisons: the base model and up to 8 of your jobs generate on the same prompts, shown side by side.

The row is committed, then its id is sent to the training queue (task `ftaas.compare`, worker/compare.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.comparison_schemas import (
    MAX_PROMPT_CHARS,
    BaseOutput,
    ComparisonCreate,
    ComparisonEntry,
    ComparisonList,
    ComparisonPublic,
    JobOutput,
)
from app.deps import CurrentTenant, OwnedComparison, SessionDep, owned_job
from app.errors import ApiError
from app.models import Comparison, ComparisonStatus, EvaluationRow, Job, JobStatus, utcnow
from app.openapi import error_responses
from app.pagination import list_page, page_of
from app.presenters import unix
from app.queue import enqueue_comparison
from app.schemas import JobError

router = APIRouter(prefix="/v1/comparisons", tags=["comparisons"])


def comparison_public(row: Comparison) -> ComparisonPublic:
    stored = row.results or {}
    results = None
    if row.status == ComparisonStatus.succeeded and "base" in stored and "jobs" in stored:
        references = stored.get("references")
        results = [
            ComparisonEntry(
                index=i,
                prompt=prompt,
                reference=references[i] if references else None,
                outputs=[
                    BaseOutput(model=b["model"], quantized=b.get("quantized", False), text=b["outputs"][i])
                    for b in stored["base"]
                ]
                + [
                    JobOutput(
                        job_id=j["job_id"],
                        model=j["model"],
                        fine_tuned_model=j.get("fine_tuned_model"),
                        adapter_type=j["adapter_type"],
                        text=j["outputs"][i],
                    )
                    for j in stored["jobs"]
                ],
            )
            for i, prompt in enumerate(row.prompts)
        ]
    return ComparisonPublic(
        id=row.id,
        created_at=unix(row.created_at),
        finished_at=unix(row.finished_at),
        status=row.status,
        job_ids=list(row.job_ids),
        prompt_source=stored.get("source", "prompts"),
        held_out_job_id=stored.get("held_out_job_id"),
        num_prompts=len(row.prompts),
        max_new_tokens=row.max_new_tokens,
        error=JobError(**row.error) if row.error else None,
        results=results,
    )


def _check_prompt_source(body: ComparisonCreate) -> None:
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


def _comparable_jobs(session, tenant, job_ids: list[str]) -> list[Job]:
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


@router.post(
    "",
    response_model=ComparisonPublic,
    responses=error_responses(404, 409),
    summary="Generate with the base model and each job on the same prompts (yours, or held-out rows)",
)
def create_comparison(body: ComparisonCreate, session: SessionDep, tenant: CurrentTenant) -> ComparisonPublic:
    _check_prompt_source(body)
    jobs = _comparable_jobs(session, tenant, body.job_ids)
    if body.prompts is not None:
        prompts, stored = list(body.prompts), {"source": "prompts", "held_out_job_id": None, "references": None}
    else:
        first = jobs[0]
        rows = session.scalars(
            select(EvaluationRow)
            .where(EvaluationRow.job_id == first.id, EvaluationRow.reference != "")
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
    )
    session.add(row)
    session.commit()  # commit, then enqueue: the worker must find the row
    if not enqueue_comparison(row.id):
        # Nothing resends a comparison: say so instead of leaving it queued for ever.
        row.status, row.finished_at = ComparisonStatus.failed, utcnow()
        row.error = {"code": "queue_unavailable", "message": "the task queue is unreachable; try again", "param": None}
        session.commit()
    return comparison_public(row)


@router.get("", response_model=ComparisonList, summary="List your comparisons, newest first")
def list_comparisons(
    session: SessionDep,
    tenant: CurrentTenant,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ComparisonList:
    rows, has_more = page_of(session, Comparison, [Comparison.tenant_id == tenant.id], after, limit)
    return ComparisonList(**list_page([comparison_public(r) for r in rows], has_more))


@router.get(
    "/{comparison_id}",
    response_model=ComparisonPublic,
    summary="A comparison: status, and when succeeded every model's output per prompt, side by side",
)
def get_comparison(row: OwnedComparison) -> ComparisonPublic:
    return comparison_public(row)

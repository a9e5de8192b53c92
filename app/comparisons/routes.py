"""/v1/comparisons: the base model and up to 8 of your jobs generate on the same prompts, shown side by side.

The row is committed, then its id is sent to the training queue (task `ftaas.compare`, worker/tasks/).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from app.api.deps import CurrentTenant, OwnedComparison, SessionDep
from app.api.openapi import error_responses
from app.api.pagination import after_query, limit_query, list_page, page_of
from app.api.presenting import unix
from app.comparisons import service as comparisons_service
from app.comparisons.schemas import (
    BaseOutput,
    ComparisonCreate,
    ComparisonEntry,
    ComparisonList,
    ComparisonPublic,
    JobOutput,
)
from app.core.tables import Comparison, ComparisonStatus
from app.jobs.schemas import JobError

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


@router.post(
    "",
    response_model=ComparisonPublic,
    responses=error_responses(404, 409),
    summary="Generate with the base model and each job on the same prompts (yours, or held-out rows)",
)
def create_comparison(body: ComparisonCreate, session: SessionDep, tenant: CurrentTenant) -> ComparisonPublic:
    row = comparisons_service.create(session, tenant, body)
    return comparison_public(row)


@router.get("", response_model=ComparisonList, summary="List your comparisons, newest first")
def list_comparisons(
    session: SessionDep,
    tenant: CurrentTenant,
    after: Annotated[str | None, after_query("cmp-abc123")] = None,
    limit: Annotated[int, limit_query(100, "comparisons")] = 20,
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

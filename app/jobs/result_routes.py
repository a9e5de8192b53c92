"""What a finished job gives back: its evaluation, its adapter archive (or its base with the adapter merged in),
and the choice of a model per file."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.api.deps import OwnedJob, SessionDep, SettingsDep
from app.api.downloads import REDIRECT_RESPONSE, Download, stored_download
from app.api.openapi import error_responses
from app.api.presenting import unix
from app.core.errors import ApiError
from app.core.settings import Settings
from app.core.storage import JobFiles
from app.core.tables import Checkpoint, Evaluation, EvaluationRow, Job, JobStatus, MergeStatus
from app.evaluation.schemas import EvaluationPublic, EvaluationSample
from app.evaluation.splits import TEST, VALIDATION, split_result
from app.jobs.merging import ASK_AGAIN_S, check_mergeable, pending_message, request_merged
from app.jobs.schemas import MergedModelPending, SelectionPublic
from app.sweeps.service import select_job as select_job_for_file

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["results"])


@router.get(
    "/{job_id}/evaluation",
    response_model=EvaluationPublic,
    summary="Base vs tuned: ROUGE, BERTScore, perplexity, token accuracy, and sample rows side by side",
)
def get_evaluation(
    job: OwnedJob,
    session: SessionDep,
    limit: Annotated[
        int | None,
        Query(
            ge=0,
            le=100000,
            description="sample rows; default the job's num_samples",
            openapi_examples={"five": {"summary": "five sample rows", "value": 5}},
        ),
    ] = None,
) -> EvaluationPublic:
    evals = {(e.subject, e.split): e for e in session.scalars(select(Evaluation).where(Evaluation.job_id == job.id))}
    base, tuned = evals.get(("base", VALIDATION)), evals.get(("tuned", VALIDATION))
    n = job.spec["evaluation"]["num_samples"] if limit is None else limit
    rows = session.scalars(
        select(EvaluationRow).where(EvaluationRow.job_id == job.id).order_by(EvaluationRow.row_index)
    ).all()
    by_split = {VALIDATION: [r for r in rows if r.split == VALIDATION], TEST: [r for r in rows if r.split == TEST]}
    validation = split_result(job, VALIDATION, evals, by_split[VALIDATION])
    status = "complete" if base and tuned else ("partial" if base or tuned else "pending")
    return EvaluationPublic(
        job_id=job.id,
        status=status,
        num_rows=(tuned or base).num_rows if (tuned or base) else None,
        base=base.metrics if base else None,
        tuned=tuned.metrics if tuned else None,
        delta=validation.delta if validation else None,
        skipped=validation.skipped if validation else None,
        validation=validation,
        test=split_result(job, TEST, evals, by_split[TEST]),
        samples=[
            EvaluationSample(
                index=r.row_index,
                prompt=r.prompt,
                reference=r.reference,
                base_output=r.base_output,
                tuned_output=r.tuned_output,
                base_scores=r.base_scores,
                tuned_scores=r.tuned_scores,
            )
            for r in by_split[VALIDATION][:n]
        ],
    )


ArchiveFormat = Literal["adapter", "merged"]


@router.get(
    "/{job_id}/adapter",
    response_class=Download,
    responses={
        200: {
            "description": "the adapter archive, or with format=merged the merged model's archive",
            "content": {"application/gzip": {}},
        },
        202: {
            "model": MergedModelPending,
            "description": "format=merged, first requests: a worker is building the merged model; ask again after "
            "Retry-After",
            "headers": {
                "Retry-After": {
                    "description": "seconds to wait before asking again",
                    "required": True,
                    "schema": {"type": "integer"},
                }
            },
        },
        206: {
            "description": "the requested byte range(s) of the archive",
            "content": {"application/gzip": {}, "multipart/byteranges": {}},
        },
        **REDIRECT_RESPONSE,
        **error_responses(409, 416, 500),
    },
    summary="Download the adapter (the best evaluated checkpoint, or ?step=N): safetensors weights, config, "
    "tokenizer files and a model card (tar.gz). X-Checksum-SHA256 carries its SHA-256; Range resumes a download. "
    "format=merged: a LoRA or QLoRA job's base model with the adapter merged in (bf16 safetensors), for serving "
    "engines that take no adapters; built by a worker on the first request (202 with Retry-After until then).",
)
def download_adapter(
    job: OwnedJob,
    session: SessionDep,
    settings: SettingsDep,
    step: Annotated[
        int | None,
        Query(
            ge=0,
            le=2**31 - 1,  # a 32-bit column: a larger number was a database error (a 500), now a 400
            description="an evaluated checkpoint's step (see .../checkpoints); default: the shipped best",
        ),
    ] = None,
    archive_format: Annotated[
        ArchiveFormat,
        Query(
            alias="format",
            description="adapter: the trained weights as trained (a peft adapter; a full job's whole model). "
            "merged: a LoRA or QLoRA job's base model with that adapter merged into its weights, saved as bf16 "
            "safetensors with the tokenizer and a model card (QLoRA: merged into the bf16 base, not the 4-bit "
            "one); the first request answers 202 while a worker builds it, later ones download it",
        ),
    ] = "adapter",
) -> Response:
    if job.status != JobStatus.succeeded or not job.adapter_name:
        raise ApiError(
            409, f"Job {job.id} has no adapter yet (status: {job.status})", param="job_id", code="adapter_not_ready"
        )
    if archive_format == "merged":
        check_mergeable(job)
    name, digest, size, label = adapter_archive(session, job, step)
    files = JobFiles(job.id, settings)
    if archive_format == "adapter":
        missing = ApiError(404, f"The adapter archive of job {job.id} is missing from storage", code="adapter_missing")
        return archive_download(settings, files.key(name), digest, size, f"{job.id}-{label}.tar.gz", missing)
    merged = request_merged(session, settings, job, label)
    if merged.status != MergeStatus.ready:
        pending = MergedModelPending(
            job_id=job.id,
            step=step,
            status=merged.status,
            created_at=unix(merged.created_at),
            message=pending_message(merged),
        )
        return JSONResponse(pending.model_dump(), status_code=202, headers={"Retry-After": str(ASK_AGAIN_S)})
    merged_label = "merged" if step is None else f"{label}-merged"
    missing = ApiError(404, f"The merged model of job {job.id} is missing from storage", code="adapter_missing")
    name = f"{job.id}-{merged_label}.tar.gz"
    return archive_download(settings, files.key(merged.archive_name), merged.sha256, merged.bytes, name, missing)


def adapter_archive(session: Session, job: Job, step: int | None) -> tuple[str, str | None, int | None, str]:
    """(stored name, sha256, bytes, label) of the shipped adapter's archive, or of checkpoint `step`'s (404 if
    none)."""
    if step is None:
        return job.adapter_name, job.adapter_sha256, job.adapter_bytes, "adapter"
    ckpt = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == step))
    if ckpt is None or not ckpt.adapter_name:
        kept = session.scalars(
            select(Checkpoint.step)
            .where(Checkpoint.job_id == job.id, Checkpoint.adapter_name.is_not(None))
            .order_by(Checkpoint.step)
        ).all()
        raise ApiError(
            404,
            f"Job {job.id} has no downloadable checkpoint at step {step} (evaluated checkpoints: "
            f"{', '.join(map(str, kept)) or 'none'})",
            param="step",
            code="checkpoint_not_found",
        )
    return ckpt.adapter_name, ckpt.adapter_sha256, ckpt.adapter_bytes, f"step-{step}"


def archive_download(
    settings: Settings, key: str, digest: str | None, size: int | None, filename: str, missing: ApiError
) -> Response:
    return stored_download(
        settings,
        key,
        expected_bytes=size,
        sha256=digest,
        media_type="application/gzip",
        filename=filename,
        missing=missing,
        headers={"X-Checksum-SHA256": digest or "", "ETag": f'"{digest}"'},
    )


@router.post(
    "/{job_id}/select",
    response_model=SelectionPublic,
    responses=error_responses(409),
    summary="Mark this job's model as the chosen one for its training file",
)
def select_job(job: OwnedJob, session: SessionDep) -> SelectionPublic:
    if job.status != JobStatus.succeeded:
        raise ApiError(409, f"Only a succeeded job can be selected; {job.id} is {job.status}", param="job_id")
    row = select_job_for_file(session, job)
    session.commit()
    return SelectionPublic(
        file_id=row.file_id, job_id=job.id, fine_tuned_model=job.fine_tuned_model, created_at=unix(row.created_at)
    )

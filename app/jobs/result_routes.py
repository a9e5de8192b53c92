"""What a finished job gives back: its evaluation, its adapter archive, and the choice of a model per file."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select

from app.api.deps import OwnedJob, SessionDep, SettingsDep
from app.api.downloads import Download
from app.api.openapi import error_responses
from app.api.presenting import unix
from app.core.errors import ApiError
from app.core.storage import JobFiles
from app.core.tables import Checkpoint, Evaluation, EvaluationRow, JobStatus
from app.evaluation.schemas import EvaluationPublic, EvaluationSample
from app.jobs.schemas import SelectionPublic
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
    evals = {e.subject: e for e in session.scalars(select(Evaluation).where(Evaluation.job_id == job.id))}
    base, tuned = evals.get("base"), evals.get("tuned")
    n = job.spec["evaluation"]["num_samples"] if limit is None else limit
    rows = session.scalars(
        select(EvaluationRow).where(EvaluationRow.job_id == job.id).order_by(EvaluationRow.row_index).limit(n)
    ).all()
    delta = None
    if base and tuned:
        delta = {k: tuned.metrics[k] - base.metrics[k] for k in tuned.metrics if k in base.metrics}
    skipped = {}
    for e in (base, tuned):
        if e and e.details:
            skipped.update(e.details.get("skipped", {}))
    status = "complete" if base and tuned else ("partial" if base or tuned else "pending")
    return EvaluationPublic(
        job_id=job.id,
        status=status,
        num_rows=(tuned or base).num_rows if (tuned or base) else None,
        base=base.metrics if base else None,
        tuned=tuned.metrics if tuned else None,
        delta=delta,
        skipped=skipped or None,
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
            for r in rows
        ],
    )


@router.get(
    "/{job_id}/adapter",
    response_class=Download,
    responses={
        200: {"description": "the adapter archive", "content": {"application/gzip": {}}},
        206: {
            "description": "the requested byte range(s) of the archive",
            "content": {"application/gzip": {}, "multipart/byteranges": {}},
        },
        **error_responses(409, 416),
    },
    summary="Download the adapter (the best evaluated checkpoint, or ?step=N): safetensors weights, config, "
    "tokenizer files and a model card (tar.gz). X-Checksum-SHA256 carries its SHA-256; Range resumes a download.",
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
) -> Download:
    if job.status != JobStatus.succeeded or not job.adapter_name:
        raise ApiError(
            409, f"Job {job.id} has no adapter yet (status: {job.status})", param="job_id", code="adapter_not_ready"
        )
    name, digest, label = job.adapter_name, job.adapter_sha256, "adapter"
    if step is not None:
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
        name, digest, label = ckpt.adapter_name, ckpt.adapter_sha256, f"step-{step}"
    path = JobFiles(job.id, settings).resolve(name)
    if not path.is_file():
        raise ApiError(404, f"The adapter archive of job {job.id} is missing from storage", code="adapter_missing")
    return Download(
        path,
        media_type="application/gzip",
        filename=f"{job.id}-{label}.tar.gz",
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

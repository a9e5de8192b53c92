"""Jobs as the API changes them: the checks and construction of a job row (shared by POST /v1/fine_tuning/jobs and
POST /v1/sweeps), and the user's cancel, pause and resume. The transitions themselves are app/core/job_state.py's;
this module decides which one a request asks for and what follows it (enqueueing, deciding a sweep)."""

from __future__ import annotations

import logging
import secrets
from typing import NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.api.deps import owned_file
from app.core import job_state
from app.core.errors import ApiError
from app.core.fleet import largest_worker_gpus
from app.core.graders import SQL_GRADERS
from app.core.job_spec import EvaluationSpec, JobCreate, gpus_of, resolve_spec
from app.core.job_state import add_event
from app.core.logs import REQUEST_ID
from app.core.metrics import GRADER_NAMES, PREFERENCE_NAMES
from app.core.queue import enqueue_job
from app.core.settings import Settings
from app.core.tables import TERMINAL_STATUSES, File, Job, JobStatus, Tenant
from app.sweeps.service import finalize_quietly

log = logging.getLogger("ftaas.api")


def check_model(settings: Settings, model: str, param: str = "model") -> str:
    """The model's source (hub id or directory) if this server allows it; a 400 naming `param` if not."""
    source = settings.resolved_models().get(model)
    if source is None:
        allowed = ", ".join(settings.public_model_ids()) or "none configured"
        raise ApiError(
            400,
            f"Model '{model}' is not available on this server (allowed: {allowed})",
            param=param,
            code="model_not_available",
        )
    return source


class DataFiles(NamedTuple):
    """A job's files: the rows it trains on, those that make its decisions, and those only reported."""

    training: File
    validation: File | None = None
    test: File | None = None


def check_pairing(files: DataFiles, method: str = "supervised") -> None:
    """The files suit the method: purpose fine-tune, preference rows for dpo and only for it, validation and test
    files of the training file's kind."""
    training = files.training
    for param, file in zip(("training_file", "validation_file", "test_file"), files):
        if file is not None and file.purpose != "fine-tune":
            raise ApiError(
                400,
                f"{param} {file.id} has purpose '{file.purpose}'; train on files uploaded with purpose 'fine-tune'",
                param=param,
                code="invalid_file_purpose",
            )
    if method == "dpo" and training.shape != "preference":
        raise ApiError(
            400,
            f"training_file {training.id} has shape '{training.shape}': preference tuning (method dpo) needs "
            "preference rows, each a prompt with a preferred and a non-preferred answer (OpenAI's input / "
            "preferred_output / non_preferred_output, or prompt / chosen / rejected)",
            param="training_file",
            code="invalid_training_file",
        )
    if method != "dpo" and training.shape == "preference":
        raise ApiError(
            400,
            f"training_file {training.id} holds preference rows (a preferred and a non-preferred answer per prompt): "
            "they train with preference tuning (method type 'dpo'), not supervised fine-tuning",
            param="training_file",
            code="invalid_training_file",
        )
    # Raw text trains on every token, preference rows on pairs, the other shapes on completions: validation and
    # test files must be of the same kind.
    for param, file in (("validation_file", files.validation), ("test_file", files.test)):
        if file is not None and _kind(file.shape) != _kind(training.shape):
            raise ApiError(
                400,
                f"{param} has shape '{file.shape}' but training_file has shape '{training.shape}'",
                param=param,
            )


def check_gpus(session: Session, settings: Settings, gpus: int, param_prefix: str = "") -> None:
    """400 when no worker of the deployment owns `gpus` GPUs: a job never spans hosts, and a job no worker could
    take would wait in its queue for ever. One GPU is always accepted (a CPU worker takes it too)."""
    if gpus <= 1:
        return
    largest = largest_worker_gpus(session, settings.fleet_seen_within_s)
    if gpus > largest:
        seen = f"{settings.fleet_seen_within_s / 3600:g} h"
        raise ApiError(
            400,
            f"resources.gpus is {gpus}, and the largest worker of this deployment (seen in the last {seen}) has "
            f"{largest} GPU{'s' if largest != 1 else ''}: a job trains on the GPUs of one worker",
            param=f"{param_prefix}resources.gpus",
            code="not_enough_gpus",
        )


def check_graders(evaluation: EvaluationSpec, files: DataFiles, test_split: float, param_prefix: str = "") -> None:
    """What the grader schema cannot check alone: a grader selected must be requested, graders need completions to
    generate, and the SQL graders need a database on every evaluated row (counted at upload)."""
    names = evaluation.grader_names()
    selected = evaluation.selection_metric
    if selected in GRADER_NAMES and selected not in names:
        raise ApiError(
            400,
            f'selection_metric \'{selected}\' is a grader: add {{"type": "{selected}"}} to evaluation.graders',
            param=f"{param_prefix}evaluation.selection_metric",
        )
    if names and files.training.shape == "text":
        raise ApiError(
            400,
            "graders score generated answers, and raw-text rows have no completion to generate",
            param=f"{param_prefix}evaluation.graders",
        )
    # The rows evaluated come from the validation and test files, or from the training file where either is split
    # off it.
    evaluated = [f for f in (files.validation, files.test) if f is not None]
    if files.validation is None or (files.test is None and test_split > 0):
        evaluated.append(files.training)
    for i, name in enumerate(names):
        if name not in SQL_GRADERS:
            continue
        for file in evaluated:
            known, missing = file.sql_schema_rows, file.num_rows - (file.sql_schema_rows or 0)
            if known is not None and missing:
                raise ApiError(
                    400,
                    f"{name} runs each output on the row's database, and {missing} of the {file.num_rows} rows of "
                    f"{file.id} have none (first at line {file.first_line_without_sql_schema}): give each row its "
                    "CREATE TABLE statements in the prompt or in a `schema` column",
                    param=f"{param_prefix}evaluation.graders.{i}",
                )


def _kind(shape: str) -> str:
    return shape if shape in ("text", "preference") else "completions"


def validate_job(settings: Settings, body: JobCreate, param_prefix: str = "") -> str:
    """What the schema cannot check; returns the model's source. Raises before anything is added."""
    source = check_model(settings, body.model, param=f"{param_prefix}model")
    dpo = body.method.type == "dpo"
    other = "supervised" if dpo else "dpo"
    if getattr(body.method, other) is not None:
        raise ApiError(
            400,
            f"method.{other} is given but method.type is '{body.method.type}'",
            param=f"{param_prefix}method.{other}",
        )
    if dpo and body.hyperparameters is not None:  # OpenAI's deprecated place is for supervised ones only
        raise ApiError(
            400, "give preference tuning's hyperparameters in method.dpo.hyperparameters", param="hyperparameters"
        )
    if dpo and body.adapter.type == "prompt_tuning":
        raise ApiError(
            400,
            "preference tuning (method dpo) trains lora, qlora or full, not prompt_tuning",
            param=f"{param_prefix}adapter.type",
        )
    if not dpo and body.evaluation.selection_metric in PREFERENCE_NAMES:
        raise ApiError(
            400,
            f"selection_metric '{body.evaluation.selection_metric}' is measured on preference pairs: "
            "only preference tuning (method dpo) jobs have it",
            param=f"{param_prefix}evaluation.selection_metric",
        )
    if body.test_file is not None and body.training.test_split > 0:
        raise ApiError(
            400,
            "give test rows either as test_file or as training.test_split, not both",
            param=f"{param_prefix}training.test_split",
        )
    if body.resources.strategy == "fsdp" and body.resources.gpus < 2:
        raise ApiError(
            400,
            "resources.strategy 'fsdp' shards the model over several GPUs: resources.gpus must be 2 or more",
            param=f"{param_prefix}resources.strategy",
        )
    if body.resources.strategy == "fsdp" and dpo:
        raise ApiError(
            400,
            "preference tuning (method dpo) over several GPUs runs with resources.strategy 'ddp': its reference "
            "pass is not sharded",
            param=f"{param_prefix}resources.strategy",
        )
    if body.resources.strategy == "fsdp" and body.adapter.type == "prompt_tuning":
        raise ApiError(
            400,
            "prompt_tuning trains a few virtual tokens of a model that fits one GPU: use resources.strategy 'ddp'",
            param=f"{param_prefix}resources.strategy",
        )
    if body.adapter.type == "prompt_tuning" and body.adapter.num_virtual_tokens >= body.training.max_seq_length:
        raise ApiError(
            400,
            "num_virtual_tokens must be smaller than max_seq_length",
            param=f"{param_prefix}adapter.num_virtual_tokens",
        )
    return source


def training_files(
    session: Session,
    tenant: Tenant,
    training_id: str,
    validation_id: str | None,
    method: str = "supervised",
    test_id: str | None = None,
) -> DataFiles:
    """The tenant's training file and optional validation and test files, checked to suit the method and each
    other."""
    files = DataFiles(
        owned_file(session, tenant, training_id, param="training_file"),
        owned_file(session, tenant, validation_id, param="validation_file") if validation_id else None,
        owned_file(session, tenant, test_id, param="test_file") if test_id else None,
    )
    check_pairing(files, method)
    return files


def build_job(
    session: Session,
    settings: Settings,
    tenant: Tenant,
    body: JobCreate,
    files: DataFiles,
    *,
    sweep_id: str | None = None,
    param_prefix: str = "",
) -> Job:
    """Validate what the schema cannot, add the job and its first event to the session (not committed)."""
    source = validate_job(settings, body, param_prefix)
    check_graders(body.evaluation, files, body.training.test_split, param_prefix)
    job = Job(
        tenant_id=tenant.id,
        model=body.model,
        model_source=source,
        training_file_id=files.training.id,
        validation_file_id=files.validation.id if files.validation else None,
        test_file_id=files.test.id if files.test else None,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31 - 1),
        metadata_=body.metadata,
        spec=resolve_spec(body).stored(),
        status=JobStatus.queued,
        sweep_id=sweep_id,
        request_id=REQUEST_ID.get(),  # the worker logs under the request that made the job
    )
    session.add(job)
    session.flush()
    how = f"{body.adapter.type}" + (" preference tuning (dpo)" if body.method.type == "dpo" else "")
    add_event(session, job.id, f"Created fine-tuning job {job.id}: {how} on {body.model}")
    return job


HOLDING_A_PLACE = (JobStatus.validating_files, JobStatus.queued, JobStatus.running)


def check_active_job_room(session: Session, settings: Settings, tenant: Tenant, new_jobs: int) -> None:
    """429 when `new_jobs` more would take the tenant past its limit of queued and running jobs.

    The tenant's row is locked first (SELECT ... FOR UPDATE, released at commit), so two requests at once
    cannot both see room for the last place."""
    limit = settings.max_active_jobs_per_tenant
    if not limit:
        return
    session.execute(select(Tenant.id).where(Tenant.id == tenant.id).with_for_update())
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        # paused jobs hold no GPU and no place; resuming one asks for a place again
        .where(
            Job.tenant_id == tenant.id,
            Job.status.in_([JobStatus.validating_files, JobStatus.queued, JobStatus.running]),
        )
    )
    if active + new_jobs > limit:
        raise ApiError(
            429,
            f"At most {limit} jobs may be queued or running at once; {active} are, and this asks for {new_jobs} "
            "more. Wait for some to finish or cancel them",
            code="too_many_active_jobs",
            headers={"Retry-After": "60"},
        )


def create(session: Session, settings: Settings, tenant: Tenant, body: JobCreate) -> Job:
    files = training_files(session, tenant, body.training_file, body.validation_file, body.method.type, body.test_file)
    check_active_job_room(session, settings, tenant, 1)
    check_gpus(session, settings, body.resources.gpus)
    job = build_job(session, settings, tenant, body, files)
    session.commit()  # commit, then enqueue: the worker must find the row
    log.info("created job %s", job.id, extra={"job_id": job.id})
    enqueue_job(job.id, gpus_of(job.spec))
    return job


def cancel(session: Session, job: Job) -> None:
    if job.status in TERMINAL_STATUSES:
        raise ApiError(409, f"Job {job.id} has already {job.status}", param="job_id", code="job_not_cancellable")
    cancelled = job_state.cancel_open_jobs(session, [job.id], "Job cancelled by the user")
    session.commit()
    if cancelled:  # its sweep may now be decided
        finalize_quietly(session, job.sweep_id)
    session.refresh(job)


def pause(session: Session, job: Job) -> None:
    if job.status in TERMINAL_STATUSES:
        raise ApiError(409, f"Job {job.id} has already {job.status}", param="job_id", code="job_not_pausable")
    job_state.pause(session, job.id)
    session.commit()
    session.refresh(job)


def resume(session: Session, settings: Settings, tenant: Tenant, job: Job) -> None:
    if job.status == JobStatus.running and job.pause_requested:
        job_state.withdraw_pause(session, job.id)
        session.commit()
    elif job.status == JobStatus.paused:
        check_active_job_room(session, settings, tenant, 1)  # a paused job holds no place; a resumed one does
        check_gpus(session, settings, gpus_of(job.spec))  # the fleet may have changed while it was paused
        resumed = job_state.resume(session, job.id)
        session.commit()  # commit, then enqueue: the worker must find the row
        if resumed:
            enqueue_job(job.id, gpus_of(job.spec))
    else:
        raise ApiError(409, f"Job {job.id} is {job.status}, not paused", param="job_id", code="job_not_paused")
    session.refresh(job)

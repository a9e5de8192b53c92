"""A job run by the training child's run() in this process against the test database, without Celery: its
row (attempt 1, running) on fresh files of a new tenant, and what it left in the database afterwards."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path

from sqlalchemy import select

from tests.conftest import DATASETS, MODEL_DIR
from tests.helpers.factories import make_file_row, make_job


def _file(s, settings, tenant, rows: list[dict], separator: str | None):
    """A file row of the tenant's whose stored bytes are `rows`, as an upload leaves it."""
    from app.datasets import validate_file
    from worker.evaluation.artifacts import sha256_of

    file_id = f"file-{uuid.uuid4().hex[:24]}"
    from app.core.storage import upload_key

    path = settings.artifacts_dir / upload_key(file_id)  # the local store's folder, where an upload's object is
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = validate_file(path, "data.jsonl", completion_separator=separator)
    return make_file_row(
        s,
        tenant,
        id=file_id,
        filename="data.jsonl",
        bytes=path.stat().st_size,
        sha256=sha256_of(path),
        format=summary.format,
        shape=summary.shape,
        num_rows=summary.num_rows,
        token_estimate=summary.token_estimate,
        sql_schema_rows=summary.sql_schema_rows,
        first_line_without_sql_schema=summary.first_line_without_sql_schema,
        completion_separator=separator,
    )


def running_job_row(
    body: dict,
    train_rows: list[dict],
    val_rows: list[dict] | None,
    separator: str | None,
    model_source: Path = MODEL_DIR,
    test_rows: list[dict] | None = None,
) -> str:
    """A job row claimed by attempt 1 (status running) on fresh files; returns its id."""
    from app.core.db import get_sessionmaker
    from app.core.job_spec import JobCreate, resolve_spec
    from app.core.settings import get_settings
    from app.core.tables import JobStatus, Tenant, utcnow

    settings = get_settings()
    with get_sessionmaker()() as s:
        tenant = Tenant(name=f"child-{uuid.uuid4().hex[:8]}")
        s.add(tenant)
        s.flush()
        train = _file(s, settings, tenant, train_rows, separator)
        val = _file(s, settings, tenant, val_rows, separator) if val_rows else None
        test = _file(s, settings, tenant, test_rows, separator) if test_rows else None
        job = make_job(
            s,
            tenant,
            train,
            spec=resolve_spec(JobCreate(model="stories260k", training_file=train.id, **body)),
            model_source=str(model_source),
            validation_file_id=val.id if val else None,
            test_file_id=test.id if test else None,
            seed=7,
            status=JobStatus.running,
            attempt=1,
            started_at=utcnow(),  # as claim_job writes it
        )
        return job.id


def queued_job(body: dict, rows: list[dict], val: list[dict], gpus: int = 1, strategy: str = "auto") -> str:
    """A queued job (for the training task to claim) whose stored spec asks for `gpus` processes, shared by
    `strategy` (app.core.job_spec.Resources)."""
    from sqlalchemy import update

    from app.core.db import get_sessionmaker
    from app.core.tables import Job

    job_id = running_job_row(body, rows, val, "\nA: ")
    with get_sessionmaker()() as s:
        spec = dict(s.get(Job, job_id).spec)
        spec["resources"] = {"gpus": gpus, "strategy": strategy}
        s.execute(update(Job).where(Job.id == job_id).values(status="queued", attempt=0, spec=spec, started_at=None))
        s.commit()
    return job_id


def run_job(
    body: dict,
    train_rows: list[dict],
    val_rows: list[dict] | None,
    separator: str | None,
    model_source: Path = MODEL_DIR,
    via_main: bool = False,
    test_rows: list[dict] | None = None,
) -> str:
    """A running job (attempt 1) on fresh files, run by the child's run() in this process (or by its main(),
    which also ends the job as the child process would)."""
    from worker.child.job_context import JobContext
    from worker.child.recipe import main, run

    job_id = running_job_row(body, train_rows, val_rows, separator, model_source, test_rows)
    if via_main:
        main([job_id, "1"])
    else:
        run(JobContext(job_id, 1))
    return job_id


def sql_rows(name: str, n: int) -> list[dict]:
    with open(DATASETS / "wikisql" / name) as fh:
        return [json.loads(line) for line in itertools.islice(fh, n)]


def stored(job_id: str, split: str = "validation"):
    """The job's row, its evaluations and evaluation rows of `split`, its checkpoints and event messages."""
    from app.core.db import get_sessionmaker
    from app.core.tables import Checkpoint, Evaluation, EvaluationRow, Job, JobEvent

    with get_sessionmaker()() as s:
        job = s.get(Job, job_id)
        evals = {
            e.subject: e
            for e in s.scalars(select(Evaluation).where(Evaluation.job_id == job_id, Evaluation.split == split))
        }
        rows = list(
            s.scalars(
                select(EvaluationRow)
                .where(EvaluationRow.job_id == job_id, EvaluationRow.split == split)
                .order_by(EvaluationRow.row_index)
            )
        )
        ckpts = list(s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))
        events = list(s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))
        s.expunge_all()
    return job, evals, rows, ckpts, events

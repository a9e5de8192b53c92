"""OpenAI's result_files: when a job succeeds it gets a CSV of its step metrics, stored as a file of the tenant's
(purpose `fine-tune-results`), so `files.content(job.result_files[0])` downloads it like any other file."""

from __future__ import annotations

import csv
import hashlib
import io

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.core.object_store import get_store
from app.core.storage import upload_key
from app.core.tables import Checkpoint, File, Job, JobEvent, new_id

RESULTS_PURPOSE = "fine-tune-results"
# OpenAI's first columns, then ours; valid_* columns follow for every metric an evaluated checkpoint has
TRAIN_COLUMNS = ["step", "epoch", "train_loss", "learning_rate", "trained_tokens"]
# the evaluation's names for OpenAI's valid_loss and valid_mean_token_accuracy
OPENAI_NAMES = {"eval_loss": "valid_loss", "token_accuracy": "valid_mean_token_accuracy"}


def step_metrics_csv(session: Session, job_id: str) -> tuple[bytes, int]:
    """One row per logged training step (the per-step metrics events), with the held-out metrics on the
    steps that were evaluated; a step logged twice (a resumed attempt redoes it) keeps its last values."""
    rows: dict[int, dict] = {}
    events = session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics").order_by(JobEvent.id)
    )
    for data in events:
        if data and "step" in data and "train_loss" in data:
            rows[int(data["step"])] = {k: data.get(k) for k in TRAIN_COLUMNS}
    valid_columns: set[str] = set()
    for ckpt in session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.evaluated)):
        row = rows.setdefault(ckpt.step, {"step": ckpt.step, "epoch": ckpt.epoch})
        for name, value in (ckpt.metrics or {}).items():
            if name != "train_loss" and isinstance(value, int | float):
                column = OPENAI_NAMES.get(name, f"valid_{name}")
                row[column] = value
                valid_columns.add(column)
    header = TRAIN_COLUMNS + sorted(valid_columns, key=lambda c: (c not in OPENAI_NAMES.values(), c))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue().encode(), len(rows)


def attach_result_file(session: Session, job: Job) -> File:
    """Store the CSV as an uploaded file is stored and add its File row to the session (the caller commits, in
    the transaction that marks the job succeeded; an object no row names is never served)."""
    content, num_rows = step_metrics_csv(session, job.id)
    file_id = new_id("file")
    get_store().put_stream(upload_key(file_id), [content])
    row = File(
        id=file_id,
        tenant_id=job.tenant_id,
        filename="step_metrics.csv",
        purpose=RESULTS_PURPOSE,
        bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        format="csv",
        shape="metrics",
        num_rows=num_rows,
        token_estimate=0,
        storage_name=file_id,
    )
    session.add(row)
    job.result_file_id = file_id
    return row

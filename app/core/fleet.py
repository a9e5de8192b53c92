"""The deployment's training workers as they advertise themselves (the `workers` table): what each owns, and the
largest job on several GPUs the API can accept. A worker writes its row on start and every reconcile pass; rows
age out after fleet_seen_within_s (a host being restarted still counts meanwhile), and each pass deletes those."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.core.job_spec import gpus_of
from app.core.queue import train_queue
from app.core.settings import Settings
from app.core.tables import Job, Worker, utcnow


def advertise(session: Session, name: str, gpus: int, queues: list[str], forget_after_s: float | None = None) -> None:
    """This worker's row, new or refreshed, and the rows of workers not seen for forget_after_s seconds deleted: a
    worker's name holds its pid, so every restart adds a row, and one that old counts for nothing (committed)."""
    row = session.get(Worker, name)
    now = utcnow()
    if row is None:
        session.add(Worker(name=name, gpus=gpus, queues=queues, started_at=now, seen_at=now))
    else:
        row.gpus, row.queues, row.seen_at = gpus, queues, now
    if forget_after_s is not None:
        session.execute(delete(Worker).where(Worker.seen_at < now - timedelta(seconds=forget_after_s)))
    session.commit()


def largest_worker_gpus(session: Session, within_s: float) -> int:
    """The GPUs of the largest worker seen within `within_s` seconds (0: none seen)."""
    since = utcnow() - timedelta(seconds=within_s)
    return session.scalar(select(func.max(Worker.gpus)).where(Worker.seen_at >= since)) or 0


def queues_of_jobs(session: Session, job_ids: list[str]) -> dict[str, str]:
    """Each job's training queue, by the GPUs its spec asks for."""
    if not job_ids:
        return {}
    rows = session.execute(select(Job.id, Job.spec).where(Job.id.in_(job_ids))).all()
    return {job_id: train_queue(gpus_of(spec)) for job_id, spec in rows}


def owned_gpus(settings: Settings, environ: Mapping[str, str] = os.environ) -> int:
    """The GPUs a training worker owns: FTAAS_WORKER_GPUS, else CUDA_VISIBLE_DEVICES's count (in `environ`, the
    worker's), else the GPUs nvidia-smi lists, else 0. Without torch: a worker must never initialise CUDA."""
    if settings.worker_gpus is not None:
        return settings.worker_gpus
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))

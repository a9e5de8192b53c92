"""The merge child: `python -m worker.child merge MERGED_MODEL_ID ATTEMPT`, run by worker/tasks/merges.py once it
has claimed the row. Merges the job's adapter (the shipped one, or an evaluated checkpoint's) into its base model
(worker/evaluation/merged.py) with a model card saying so, and writes the outcome, fenced on its attempt: a build
that was taken over writes nothing and removes its own archive. Why merging happens on request:
app/jobs/merging.py."""

from __future__ import annotations

import logging
import traceback
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from app.core.db import get_sessionmaker
from app.core.errors import error_body
from app.core.job_state import finish_merge
from app.core.local_cache import LocalCache
from app.core.object_store import StoreError
from app.core.settings import get_settings, public_model_name
from app.core.storage import JobFiles
from app.core.tables import Checkpoint, Evaluation, Job, MergedModel, MergeStatus
from worker.child.process import prepare_process, prepare_torch, set_up_logging

log = logging.getLogger("ftaas.merge")


@dataclass
class MergePlan:
    """What one build needs, read from the database before any model is loaded."""

    adapter_archive: Path  # this host's copy (fetched from the store with its checksum)
    adapter_sha256: str | None
    base_source: str
    base_model: str  # its public name
    card: str
    archive: Path  # where this attempt writes its merged archive
    files: JobFiles
    source: str


def read_plan(session, row: MergedModel) -> MergePlan:
    from worker.evaluation.model_card import card_facts, model_card

    job = session.get(Job, row.job_id)
    files = JobFiles(job.id)
    evals = {
        (e.subject, e.split): e.metrics for e in session.scalars(select(Evaluation).where(Evaluation.job_id == job.id))
    }
    metrics = {subject: m for (subject, split), m in evals.items() if split == "validation"}
    test = (evals.get(("base", "test")), evals.get(("tuned", "test")))
    step = None if row.source == "adapter" else int(row.source.removeprefix("step-"))
    if step is None:
        adapter_name, tuned = job.adapter_name, metrics.get("tuned")
    else:
        ckpt = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step == step))
        adapter_name, tuned = ckpt.adapter_name, ckpt.metrics
    params = (job.trainable_params or 0, job.total_params or 0)
    card = model_card(
        card_facts(job, job.fine_tuned_model),
        job.spec,
        metrics.get("base"),
        tuned,
        params,
        step=step,
        merged=True,
        test=test if step is None else None,
    )
    return MergePlan(
        adapter_archive=files.resolve(adapter_name),
        adapter_sha256=job.adapter_sha256 if step is None else ckpt.adapter_sha256,
        base_source=job.model_source,
        base_model=public_model_name(job.model_source),
        card=card,
        archive=files.merged_archive(row.source, row.attempt),
        files=files,
        source=row.source,
    )


def run_merge(merge_id: str, attempt: int) -> str:
    """Build one merged model in this process and store the outcome; returns its status, or "skipped" when the
    row is not this attempt's to build."""
    from worker.evaluation.merged import package_merged

    Session = get_sessionmaker()
    with Session() as s:
        row = s.get(MergedModel, merge_id)
        if row is None or row.status != MergeStatus.building or row.attempt != attempt:
            log.info("merged model %s is not being built by attempt %s; nothing to do", merge_id, attempt)
            return "skipped"
        plan = read_plan(s, row)
    cache = LocalCache.from_settings()
    try:
        cache.fetch(plan.files.key_of(plan.adapter_archive), sha256=plan.adapter_sha256)
        archive, digest, size = package_merged(
            plan.adapter_archive, plan.base_source, plan.base_model, plan.card, plan.archive
        )
        cache.push(archive)
        archive.unlink()  # downloads come from the store
    except Exception as exc:  # noqa: BLE001 - any failure ends this build, with its reason
        traceback.print_exc()
        with Session() as s:
            finish_merge(
                s,
                merge_id,
                attempt,
                MergeStatus.failed,
                error=error_body("merge_failed", f"{type(exc).__name__}: {exc}"),
            )
        return MergeStatus.failed
    with Session() as s:
        won = finish_merge(
            s,
            merge_id,
            attempt,
            MergeStatus.ready,
            archive_name=plan.files.relative(archive),
            sha256=digest,
            bytes=size,
            error=None,
        )
    ours = plan.files.key_of(archive)
    if won:  # what earlier attempts left (a build presumed dead that finished after all, a lost file's first copy)
        prefix = plan.files.merged_prefix()
        stale = [k for k in cache.store.list(prefix) if k.startswith(f"{prefix}/{plan.source}-") and k != ours]
    else:  # another attempt holds the row: ours is not the archive it names
        stale = [ours]
    with suppress(StoreError):
        cache.store.delete(stale)
    return MergeStatus.ready if won else "skipped"


def main(argv: list[str]) -> int:
    """`python -m worker.child merge MERGED_MODEL_ID ATTEMPT` (see worker/child/__main__.py)."""
    settings = get_settings()
    set_up_logging(settings, "merge")
    prepare_process(settings)
    prepare_torch(settings)
    run_merge(argv[0], int(argv[1]))
    return 0

"""The merge task: claim the merged model's row and run `python -m worker.child merge ID`; a child that dies
without writing its outcome (a crash, a kill, out of memory) leaves the row failed with the last line of its log.
The API's side, and why merging is done on request: app/jobs/merging.py."""

from __future__ import annotations

import logging

from app.core.celery_app import MERGE_TASK
from app.core.db import get_sessionmaker
from app.core.errors import error_body
from app.core.job_state import claim_merge, finish_merge
from app.core.storage import JobFiles
from app.core.tables import MergedModel, MergeStatus
from worker.tasks.runtime import celery, logging_for
from worker.tasks.supervise import last_lines, spawn_child

log = logging.getLogger("ftaas.worker")


@celery.task(name=MERGE_TASK, bind=True)
def merge(self, merge_id: str) -> str:
    with logging_for(MergedModel, merge_id):
        return merge_now(self, merge_id)


def merge_now(task, merge_id: str) -> str:
    Session = get_sessionmaker()
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    with Session() as s:
        attempt = claim_merge(s, merge_id, take_over_building=redelivered)
        row = s.get(MergedModel, merge_id) if attempt is not None else None
        job_id, source = (row.job_id, row.source) if row else (None, None)
    if attempt is None:
        log.info("merged model %s is not queued (built, failed or taken); nothing to do", merge_id)
        return "skipped"
    log.info("merged model %s (job %s, %s) attempt %s: starting child", merge_id, job_id, source, attempt)
    log_path = JobFiles(job_id).merge_log(source)
    code = spawn_child(["merge", merge_id, str(attempt)], log_path).wait()
    last_line = (last_lines(log_path).strip().splitlines() or [f"exit code {code}"])[-1][:500]
    with Session() as s:
        # Still building under this attempt: the child died without writing its outcome.
        if finish_merge(
            s,
            merge_id,
            attempt,
            MergeStatus.failed,
            error=error_body("merge_crashed", f"merge child exited with code {code}: {last_line}"),
        ):
            return "failed"
    return "done"

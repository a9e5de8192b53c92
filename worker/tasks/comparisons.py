"""The comparison task: claim the comparison row and run `python -m worker.child compare ID`; a child that
dies without writing its outcome leaves the comparison failed with the last line of its log."""

from __future__ import annotations

import logging

from app.core.celery_app import COMPARE_TASK
from app.core.db import get_sessionmaker
from app.core.errors import error_body
from app.core.job_state import claim_comparison, finish_comparison
from app.core.storage import comparison_log
from app.core.tables import Comparison, ComparisonStatus
from worker.tasks.runtime import celery, logging_for
from worker.tasks.supervise import last_lines, spawn_child

log = logging.getLogger("ftaas.worker")


@celery.task(name=COMPARE_TASK, bind=True)
def compare(self, comparison_id: str) -> str:
    with logging_for(Comparison, comparison_id):
        return compare_now(self, comparison_id)


def compare_now(task, comparison_id: str) -> str:
    Session = get_sessionmaker()
    redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
    with Session() as s:
        if not claim_comparison(s, comparison_id, take_over_running=redelivered):
            log.info("comparison %s is not queued (finished or taken); nothing to do", comparison_id)
            return "skipped"
    log.info("comparison %s: starting child", comparison_id)
    log_path = comparison_log(comparison_id)
    code = spawn_child(["compare", comparison_id], log_path).wait()
    with Session() as s:
        # Still running: the child died without writing its outcome (an exception escaped, a kill, OOM).
        last_line = (last_lines(log_path).strip().splitlines() or [f"exit code {code}"])[-1][:500]
        reason = f"comparison child exited with code {code}: {last_line}"
        if finish_comparison(
            s,
            comparison_id,
            ComparisonStatus.failed,
            error=error_body("comparison_crashed", reason),
        ):
            return "failed"
    return "done"

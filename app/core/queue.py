"""Enqueue a job by task name, carrying only its id. The job row is committed before this is called."""

from __future__ import annotations

import logging
from functools import lru_cache

from celery import Celery

from app.core.celery_app import COMPARE_TASK, MERGE_TASK, PREVIEW_TASK, TRAIN_TASK, make_celery
from app.core.settings import get_settings

log = logging.getLogger(__name__)


@lru_cache
def producer() -> Celery:
    return make_celery(get_settings())


def _send(task: str, object_id: str, queue: str | None = None) -> bool:
    try:
        producer().send_task(
            task,
            args=[object_id],
            queue=queue or get_settings().queue_name,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
        return True
    except Exception:  # kombu raises several connection error types
        log.exception("could not enqueue %s %s", task, object_id)
        return False


def train_queue(gpus: int = 1) -> str:
    """The queue of training jobs on `gpus` GPUs. One queue per size: a worker takes only jobs it can run, and
    takes the largest first (worker_queues)."""
    name = get_settings().queue_name
    return name if gpus <= 1 else f"{name}-{gpus}gpus"


def worker_queues(gpus: int) -> list[str]:
    """The queues a worker owning `gpus` GPUs consumes, largest jobs first. With Redis, kombu's `priority` order
    (celery_app.broker_options) asks BRPOP for them in this order, which answers from the first non-empty one: a
    queued job on several GPUs is taken before the next one-GPU job, never starved by a stream of them. A CPU
    worker (0 GPUs) takes one-GPU jobs, as ever."""
    return [train_queue(n) for n in range(gpus, 1, -1)] + [train_queue(1)]


def enqueue_job(job_id: str, gpus: int = 1) -> bool:
    """Send the job id to the training queue of its size. A broker outage is not the client's error: the job
    stays queued in the database and the reconciler sends it again, so this only logs and returns False."""
    return _send(TRAIN_TASK, job_id, train_queue(gpus))


def enqueue_comparison(comparison_id: str) -> bool:
    """Send a comparison id to the same queue the training workers consume. False when the broker is away
    (nothing resends comparisons, so the caller marks the comparison failed)."""
    return _send(COMPARE_TASK, comparison_id)


def enqueue_preview(preview_id: str) -> bool:
    """Send a preview id to the preview worker's queue. False when the broker is away (the caller marks the
    preview failed)."""
    return _send(PREVIEW_TASK, preview_id, get_settings().preview_queue_name)


def enqueue_merge(merge_id: str) -> bool:
    """Send a merged model's id to the training queue. False when the broker is away: the row stays queued,
    unsent, and the next request for it sends it again."""
    return _send(MERGE_TASK, merge_id)


def broker_reachable(timeout: float = 2.0) -> bool:
    try:
        with producer().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False


def queue_depths(queues: list[str], timeout: float = 2.0) -> dict[str, int]:
    """Messages waiting in each queue (not the ones a worker holds), over one connection; a queue nothing was ever
    sent to has none. Empty when the broker does not answer."""
    try:
        with producer().connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
            depths = {}
            for queue in queues:
                try:
                    depths[queue] = int(conn.default_channel.queue_declare(queue=queue, passive=True).message_count)
                except Exception:  # noqa: BLE001 - kombu answers a queue never declared with a channel error
                    depths[queue] = 0
            return depths
    except Exception:  # noqa: BLE001 - kombu raises several connection error types
        return {}

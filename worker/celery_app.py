"""The Celery application. Torch-free, so the API can import it to enqueue by task name.

Settings for hours-long GPU tasks on Redis (DESIGN.md):
- acks_late + reject_on_worker_lost: a task whose worker dies is delivered again, not lost;
- prefetch 1, concurrency 1, max_tasks_per_child 1: one job per GPU at a time, fresh process each time;
- visibility_timeout longer than the longest job, or Redis re-delivers a running job (celery#5935).
  Re-delivery is harmless anyway: the task claims its job row atomically.
"""

from __future__ import annotations

from celery import Celery

from app.config import Settings, get_settings

TRAIN_TASK = "ftaas.train"
COMPARE_TASK = "ftaas.compare"  # worker/compare.py: base vs jobs on the same prompts, same queue and worker


def broker_options(settings: Settings) -> dict:
    if settings.broker_url.startswith("filesystem://"):
        # Embedded mode: kombu's filesystem transport, a folder both sides can reach, no server.
        folder = (settings.data_dir / "broker").resolve()
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            # kombu's default is ./control, wherever the process happens to start
            "control_folder": str(folder / "control"),
        }
    return {"visibility_timeout": settings.visibility_timeout_s}


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    # `include`: the worker (celery -A worker.tasks) imports the comparison task module at start-up.
    celery = Celery("ftaas", broker=settings.broker_url, include=["worker.compare"])
    celery.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue_name,
        task_routes={TRAIN_TASK: {"queue": settings.queue_name}, COMPARE_TASK: {"queue": settings.queue_name}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_max_tasks_per_child=1,
        worker_send_task_events=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return celery

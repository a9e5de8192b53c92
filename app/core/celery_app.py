"""The Celery application. Torch-free, so the API can import it to enqueue by task name.

Settings for hours-long GPU tasks on Redis (DESIGN.md):
- acks_late + reject_on_worker_lost: a task whose worker dies is delivered again, not lost;
- prefetch 1, concurrency 1, max_tasks_per_child 1: one job per GPU at a time, fresh process each time;
- visibility_timeout longer than the longest job, or Redis re-delivers a running job (celery#5935).
  Re-delivery is harmless anyway: the task claims its job row atomically.
"""

from __future__ import annotations

from celery import Celery

from app.core.settings import Settings, get_settings

TRAIN_TASK = "ftaas.train"
COMPARE_TASK = "ftaas.compare"  # worker/tasks/comparisons.py: base vs jobs on the same prompts, same queue and worker
# worker/tasks/preview.py: a file's first rows as a model will train them; a queue of its own, consumed by the
# preview worker (CPU, a tokenizer only), so that it never waits behind hours of training
PREVIEW_TASK = "ftaas.preview"
MERGE_TASK = "ftaas.merge"  # worker/tasks/merges.py: a LoRA job's base with its adapter merged, same queue and worker


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
    return {
        "visibility_timeout": settings.visibility_timeout_s,
        # kombu 5.7 (transport/redis.py) sweeps unacked messages past visibility_timeout back into their queue
        # from a timer every `unacked_restore_interval` s (10), but scans Redis only on every
        # `unacked_restore_throttle`-th call (10): about every 100 s. A throttle of 1 makes the interval the one
        # knob, so the sweep runs every broker_restore_every_s.
        "unacked_restore_interval": settings.broker_restore_every_s,
        "unacked_restore_throttle": 1,
        # a worker's queues are asked in the order it lists them: its largest jobs first (app/core/queue.py)
        "queue_order_strategy": "priority",
    }


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    # The worker (`celery -A worker.tasks`) registers its tasks by importing that package; the API only sends
    # tasks by name (TRAIN_TASK, COMPARE_TASK, MERGE_TASK) and never imports the worker.
    celery = Celery("ftaas", broker=settings.broker_url)
    celery.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        # On a lost broker connection, True makes Celery cancel every running acks_late task, whose message it
        # can no longer ack (celery/worker/consumer/consumer.py, on_connection_error_after_connected); Celery 6
        # plans True as the default. Here that would kill hours of training for a Redis blip. The job row's
        # lease, not the broker message, guards the job: the task runs on (it needs only Postgres), the worker
        # reconnects, and a re-delivery of the message finds the job claimed and does nothing.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # After such a reconnect the new channel does not count the running task's message (it came on the old
        # one), so a busy worker would reserve one more job and sit on it until its own job ends, hours, while
        # idle workers wait (seen). With this, a worker takes a message only when its pool process is free
        # (celery/worker/consumer/tasks.py; Redis only, so off for the embedded filesystem broker).
        worker_disable_prefetch=not settings.broker_url.startswith("filesystem://"),
        task_default_queue=settings.queue_name,
        task_routes={
            TRAIN_TASK: {"queue": settings.queue_name},
            COMPARE_TASK: {"queue": settings.queue_name},
            MERGE_TASK: {"queue": settings.queue_name},
            PREVIEW_TASK: {"queue": settings.preview_queue_name},
        },
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

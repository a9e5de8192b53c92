"""Celery entry points of the worker (`celery -A worker.tasks worker`): importing this package registers
the app, the training, comparison and merge tasks, and the reconciler bootstep."""

from worker.tasks import comparisons, merges, reconciler, training  # noqa: F401 - registers the tasks and the bootstep
from worker.tasks.runtime import celery

__all__ = ["celery"]

"""Celery entry points of the worker (`celery -A worker.tasks worker`): importing this package registers
the app, the training, comparison, merge and preview tasks, and the reconciler bootstep."""

from worker.tasks import comparisons, merges, preview, reconciler, training  # noqa: F401 - registers tasks, bootstep
from worker.tasks.runtime import celery

__all__ = ["celery"]

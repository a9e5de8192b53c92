"""GET /metrics: the API in Prometheus' text format, for the fleet's dashboards and alerts.

- requests and their latency by route template, method and status class, through prometheus-fastapi-instrumentator
  (the FastAPI instrumentation prometheus-client's own docs point to; route templates, never raw paths, so
  `/v1/fine_tuning/jobs/{job_id}` is one series however many jobs there are);
- `ftaas_jobs{status}`: jobs by status, and `ftaas_queue_depth{queue}`: messages waiting in the training queue of
  each job size the fleet's largest worker can run and in the preview queue, both read when scraped (every
  tenant's jobs: an operator's view).

Under several API processes (uvicorn's supervisor) each process counts its own requests into files under
PROMETHEUS_MULTIPROC_DIR (set by app/api/server.py before it starts them), and a scrape, answered by whichever
process gets it, sums every process's files: prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select

from app.api.deps import SessionDep

NOT_INSTRUMENTED = ["/metrics", "/healthz", "/readyz"]  # scrapes and probes would drown the real traffic


class ServiceCollector:
    """Read at each scrape, through the request's database session: nothing to keep in step between processes."""

    def __init__(self, session) -> None:
        self.session = session

    def collect(self):
        from app.core.fleet import largest_worker_gpus
        from app.core.queue import queue_depths, worker_queues
        from app.core.settings import get_settings
        from app.core.tables import Job, JobStatus

        jobs = GaugeMetricFamily("ftaas_jobs", "Fine-tuning jobs by status", labels=["status"])
        try:
            counts = dict(self.session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            for status in JobStatus:
                jobs.add_metric([status.value], counts.get(status, 0))
        except Exception:  # noqa: BLE001 - a scrape during a database outage shows no job counts, not a 500
            pass
        yield jobs
        settings = get_settings()
        try:  # the training queue of every job size the fleet can run (app/core/queue.py)
            largest = largest_worker_gpus(self.session, settings.fleet_seen_within_s)
        except Exception:  # noqa: BLE001 - a database outage: the one-GPU queue still
            largest = 1
        depth = GaugeMetricFamily("ftaas_queue_depth", "Messages waiting in a queue", labels=["queue"])
        for queue, n in queue_depths([*worker_queues(max(1, largest)), settings.preview_queue_name]).items():
            depth.add_metric([queue], n)
        yield depth


def _registry() -> CollectorRegistry:
    """Every API process's counts summed (multiprocess mode), or this single process's own registry."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def install_metrics(app: FastAPI) -> None:
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator(should_group_status_codes=True, excluded_handlers=NOT_INSTRUMENTED).instrument(app)
    registry = _registry()

    @app.get("/metrics", include_in_schema=False)
    def metrics(session: SessionDep) -> Response:
        service = CollectorRegistry()
        service.register(ServiceCollector(session))
        return Response(generate_latest(registry) + generate_latest(service), media_type=CONTENT_TYPE_LATEST)

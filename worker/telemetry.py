"""A training worker's /metrics in Prometheus' text format (FTAAS_WORKER_METRICS_PORT; 0, the default: none):

- `ftaas_worker_job_phase{job_id, phase}`: 1 for the phase of the job this worker runs (loading_data, loading_model,
  evaluating_base, reference, training, evaluating, packaging), 0 for the phases it left; no series while idle;
- `ftaas_worker_job_step`, `ftaas_worker_job_total_steps`, `ftaas_worker_step_seconds` (the last optimizer step's
  wall time), `ftaas_worker_tokens_per_second` (the last step's useful tokens, padding excluded, per second), each
  by job_id;
- `ftaas_worker_gpu_memory_bytes{job_id, kind}`: torch.cuda's allocated, reserved and peak allocated bytes of the
  training child; absent on a CPU;
- `ftaas_worker_steps_total`, `ftaas_worker_tokens_total`: every step and useful token this worker trained since it
  started; `ftaas_worker_jobs_total{outcome}`: training attempts it ran, by how they ended (succeeded, failed,
  cancelled, retrying, interrupted, paused, skipped, lost).

How the figures get from where they happen to the port: prometheus-client's multiprocess mode, the one the API's
several processes already use (app/api/telemetry.py). Three processes are involved: Celery's main process serves
the port (it lives as long as the worker), a pool process runs each task and ends with it (max_tasks_per_child=1),
and a training child per attempt knows the step figures. Each records into its own files in a folder of this
worker's (PROMETHEUS_MULTIPROC_DIR, set in the main process before any metric exists, so the pool processes and
the children inherit it), and a scrape sums them. So a counter recorded by a process that has ended still counts
(the pool process's job outcome, a finished child's tokens), with no pipe or file format of ours to keep in step,
and the child reports the very figures its progress hook already reports (JobContext.progress calls
JobFigures.observe). The per-job gauges are "live" ones: the files of a process that ended are dropped at the
next scrape (prometheus-client's mark_process_dead), so a finished job's series go with its child, however it
ended (kill -9 included). Each start of a worker makes a new folder and removes those of workers no longer
running: counters restart, as Prometheus expects of a restarted process.

When the port is 0 no folder is made and every recording here is a no-op (a child checks PROMETHEUS_MULTIPROC_DIR).
Torch-free: the training child imports this, and reads CUDA's figures only if torch is already loaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

log = logging.getLogger("ftaas.worker")

FILES_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it when its first metric is made
LIVE = "livemostrecent"  # a per-job gauge: the latest value, gone when its process has ended


def enabled() -> bool:
    return bool(os.environ.get(FILES_ENV))


def serve_metrics(port: int, data_dir: Path) -> bool:
    """In the worker's main process, before its pool starts: this worker's metric files, and the port serving
    them. A port already taken is logged and the worker runs without metrics (training matters more)."""
    folders = data_dir / "prometheus"
    for old in folders.glob("worker-*"):  # of workers no longer running (a live one's are its own)
        pid = old.name.removeprefix("worker-")
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    folder = (folders / f"worker-{os.getpid()}").resolve()
    folder.mkdir(parents=True)
    os.environ[FILES_ENV] = str(folder)
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(WorkerCollector(folder))
    try:
        start_http_server(port, registry=registry)
    except OSError as exc:
        log.error("worker metrics: cannot serve on port %s (%s); running without /metrics", port, exc)
        os.environ.pop(FILES_ENV)
        return False
    log.info("worker metrics on port %s (/metrics), files in %s", port, folder)
    return True


def no_metrics() -> None:
    """A worker not serving metrics: none recorded either, even under an inherited PROMETHEUS_MULTIPROC_DIR."""
    os.environ.pop(FILES_ENV, None)


class WorkerCollector:
    """prometheus-client's sum over every process's files, after dropping the live gauges of processes that ended."""

    def __init__(self, folder: Path) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.folder, self.files = folder, MultiProcessCollector(None, str(folder))

    def collect(self):
        from prometheus_client.multiprocess import mark_process_dead

        for path in self.folder.glob("gauge_live*.db"):
            pid = int(path.stem.rsplit("_", 1)[1])
            if not _alive(pid):
                mark_process_dead(pid, str(self.folder))
        return self.files.collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@lru_cache
def _metrics() -> SimpleNamespace:
    """Made once per process, and only when enabled (multiprocess mode is chosen at the first metric)."""
    from prometheus_client import Counter, Gauge

    def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
        return Gauge(name, doc, labels, multiprocess_mode=LIVE)

    return SimpleNamespace(
        phase=gauge(
            "ftaas_worker_job_phase", "1 for the phase of the job being run, 0 for phases it left", ["job_id", "phase"]
        ),
        step=gauge("ftaas_worker_job_step", "Optimizer steps done of the job being trained", ["job_id"]),
        total_steps=gauge("ftaas_worker_job_total_steps", "Optimizer steps the job trains in all", ["job_id"]),
        step_seconds=gauge("ftaas_worker_step_seconds", "Wall time of the last optimizer step", ["job_id"]),
        tokens_per_second=gauge(
            "ftaas_worker_tokens_per_second", "Useful (non-padding) tokens of the last step per second", ["job_id"]
        ),
        gpu_memory=gauge("ftaas_worker_gpu_memory_bytes", "CUDA memory of the training child", ["job_id", "kind"]),
        steps=Counter("ftaas_worker_steps", "Optimizer steps trained by this worker"),
        tokens=Counter("ftaas_worker_tokens", "Useful (non-padding) tokens trained by this worker"),
        jobs=Counter("ftaas_worker_jobs", "Training attempts run by this worker, by how they ended", ["outcome"]),
    )


def count_job(outcome: str) -> None:
    """One training attempt ended (the task's verdict: succeeded, failed, retrying, ...)."""
    if enabled():
        _metrics().jobs.labels(outcome).inc()


class JobFigures:
    """The training child's figures, from the values its progress hook reports (worker/training/loop.py)."""

    def __init__(self, job_id: str) -> None:
        self.job_id, self.phase, self.step = job_id, None, None

    def observe(self, values: dict) -> None:
        if not enabled():
            return
        m, job = _metrics(), self.job_id
        phase = values.get("phase")
        if phase and phase != self.phase:
            if self.phase:
                m.phase.labels(job, self.phase).set(0)
            m.phase.labels(job, phase).set(1)
            self.phase = phase
        if "step" in values:
            if self.step is not None and values["step"] > self.step:
                m.steps.inc(values["step"] - self.step)
            self.step = values["step"]
            m.step.labels(job).set(values["step"])
        if values.get("total_steps") is not None:
            m.total_steps.labels(job).set(values["total_steps"])
        if values.get("step_seconds"):
            m.step_seconds.labels(job).set(values["step_seconds"])
            m.tokens_per_second.labels(job).set(values.get("step_tokens", 0) / values["step_seconds"])
        if values.get("step_tokens"):
            m.tokens.inc(values["step_tokens"])
        for kind, n in cuda_memory().items():
            m.gpu_memory.labels(job, kind).set(n)


def cuda_memory() -> dict[str, int]:
    """This process's CUDA memory, if torch is loaded and has used CUDA; {} otherwise (a CPU, or before the model)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    cuda = torch.cuda
    return {
        "allocated": cuda.memory_allocated(),
        "reserved": cuda.memory_reserved(),
        "peak": cuda.max_memory_allocated(),
    }

"""Jobs that lost their message or their worker go back to the queue: the periodic reconcile pass (expired
leases, long-queued jobs, a broker that forgot its messages) and, at worker start, the jobs of this host's
dead predecessors. Runs as a bootstep on the worker's own timer.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager, suppress

from celery import bootsteps
from sqlalchemy import select

from app.core.celery_app import TRAIN_TASK
from app.core.db import get_sessionmaker
from app.core.fleet import advertise, owned_gpus, queues_of_jobs
from app.core.job_state import end_lease_of_dead_holder, take_orphaned_jobs
from app.core.queue import worker_queues
from app.core.settings import get_settings
from app.core.tables import Job, JobStatus
from worker.tasks.runtime import celery, worker_name
from worker.tasks.supervise import is_training_child

log = logging.getLogger("ftaas.worker")


def reconcile_once() -> int:
    """Send again every job whose lease expired or whose message may be lost; the claim dedupes."""
    settings, Session = get_settings(), get_sessionmaker()
    with Session() as s:
        ids = take_orphaned_jobs(s, queued_older_than_s=settings.requeue_queued_after_s)
        queues = queues_of_jobs(s, ids)
    for job_id in ids:
        celery.send_task(TRAIN_TASK, args=[job_id], queue=queues[job_id])
    if ids:
        log.info("reconciler re-enqueued %s", ids)
    return len(ids) + len(resend_if_broker_lost())


# The marker is refreshed every pass; the TTL only lets the marker of a queue no longer served go away. Should
# every worker be stopped for longer, the first pass after takes it for a loss: one harmless resend.
BROKER_MARKER_TTL_S = 24 * 3600


def resend_if_broker_lost() -> list[str]:
    """Send every queued job again when the broker has forgotten its messages (Redis restarted without
    persistence, or flushed), without waiting requeue_queued_after_s. A loss shows as a marker key missing;
    the one worker whose SET NX recreates it resends (a job also still in the queue gets a second message,
    which claim_job makes a no-op). Running jobs need nothing: their lease, not their message, keeps them."""
    queue = get_settings().queue_name
    if not broker_marker_was_missing(queue):
        return []
    ids = queued_job_ids()
    with get_sessionmaker()() as s:
        queues = queues_of_jobs(s, ids)
    try:
        for job_id in ids:
            celery.send_task(TRAIN_TASK, args=[job_id], queue=queues[job_id])
    except Exception:
        with suppress(Exception):  # so that the next pass, not nobody, sends them
            with broker_redis() as client:
                client.delete(broker_marker_key(queue))
        raise
    log.log(
        logging.WARNING if ids else logging.INFO,
        "broker marker of queue %s was missing (first start, or the broker lost its messages): "
        "re-sent %d queued job(s) %s",
        queue,
        len(ids),
        ids,
    )
    return ids


def broker_marker_was_missing(queue: str) -> bool:
    """SET NX of the queue's marker: True for the one caller that found it missing; False when it was there,
    and for a broker that is not Redis (the embedded filesystem transport keeps its messages in files)."""
    with broker_redis() as client:
        if client is None:
            return False
        key = broker_marker_key(queue)
        if client.set(key, f"{worker_name()} at {time.time():.0f}", nx=True, ex=BROKER_MARKER_TTL_S):
            return True
        client.expire(key, BROKER_MARKER_TTL_S)
        return False


def broker_marker_key(queue: str) -> str:
    # one per queue: services sharing a Redis (one queue each) must each resend their own jobs after a loss
    return f"ftaas:broker-marker:{queue}"


@contextmanager
def broker_redis():
    """The redis-py client of a fresh broker connection of this Celery app (kombu's own, with its options and
    key prefix), or None when the broker is not Redis. Fresh, not pooled: one per reconcile_every_s costs
    nothing, and none is left holding a socket from before a Redis restart."""
    with celery.connection_for_write() as conn:
        yield conn.default_channel.client if conn.transport.driver_type == "redis" else None


def queued_job_ids() -> list[str]:
    with get_sessionmaker()() as s:
        return list(s.scalars(select(Job.id).where(Job.status == JobStatus.queued).order_by(Job.created_at)))


def advertise_this_worker() -> None:
    """This worker's row in the fleet (app/core/fleet.py): its GPUs and the queues it takes jobs from."""
    settings = get_settings()
    gpus = owned_gpus(settings)
    with get_sessionmaker()() as s:
        advertise(s, worker_name(), gpus, worker_queues(gpus), forget_after_s=settings.fleet_seen_within_s)


def _reconcile_safely() -> None:
    try:  # apart: a failed advertisement (the table not migrated yet, say) must not stop the resends
        advertise_this_worker()
    except Exception:  # noqa: BLE001 - the database may be away for a while
        log.warning("advertising this worker failed", exc_info=True)
    try:
        reconcile_once()
    except Exception:  # noqa: BLE001 - the broker or the database may be away for a while
        log.warning("reconcile pass failed", exc_info=True)


def holder_is_gone(worker: str, claimed_at) -> bool:
    """Whether the process named in a job's `worker` ("host:pid") is gone: no such pid, a zombie (killed, its
    parent dead too and not yet reaped), or a process started after the claim (the pid was reused)."""
    import psutil

    pid = worker.rsplit(":", 1)[1]
    if not pid.isdigit():
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        return claimed_at is not None and proc.create_time() > claimed_at.timestamp()
    except psutil.NoSuchProcess:
        return True


def reclaim_jobs_of_dead_predecessors() -> list[str]:
    """At worker start: jobs still `running` under a worker process of this host that no longer exists.

    A worker killed outright (kill -9, the OOM killer, a container restart) leaves its job running with a
    lease of up to lease_s to go. Its name says it was on this host, and its process is gone, so the lease
    ends now and the first reconcile pass sends the job again. A training child it may have left behind is
    killed first, so two attempts never train at once. A holder that still runs is left to its lease."""
    import psutil

    host = worker_name().rsplit(":", 1)[0]
    Session = get_sessionmaker()
    with Session() as s:
        rows = s.execute(
            select(Job.id, Job.worker, Job.started_at).where(
                Job.status == JobStatus.running, Job.worker.startswith(f"{host}:")
            )
        ).all()
        dead = [(job_id, name) for job_id, name, claimed_at in rows if holder_is_gone(name, claimed_at)]
        if len(dead) < len(rows):
            log.info("running jobs of this host whose holder still runs: %s", sorted(set(rows) - set(dead)))
        for job_id, name in dead:
            for proc in psutil.process_iter(["cmdline"]):
                if is_training_child(proc.info["cmdline"] or [], job_id):
                    with suppress(psutil.Error):
                        proc.kill()
                        proc.wait(timeout=10)
            end_lease_of_dead_holder(s, job_id, name)
        s.commit()
    return [job_id for job_id, _ in dead]


class Reconciler(bootsteps.StartStopStep):
    """Runs reconcile_once every reconcile_every_s on the worker's own timer, in its main thread.

    Not a thread of its own: the prefork pool forks a new child for every task (max_tasks_per_child=1), and
    a fork while another thread holds an import or logging lock leaves the child waiting on it for ever
    (seen: a pool child stuck in importlib's module lock because the reconciler thread was importing
    SQLAlchemy's Postgres dialect at that moment). Timers fire between forks, never during one."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker, **kwargs) -> None:
        super().__init__(worker, **kwargs)
        self.tref = None

    def start(self, worker) -> None:
        # A first pass now, in the main thread, before the pool forks: it does the one-time imports (the
        # database dialect, the broker's client). With a polling transport (the embedded filesystem broker)
        # Celery's timer is a thread, and from then on a pass imports nothing that a fork could catch.
        try:
            reclaimed = reclaim_jobs_of_dead_predecessors()
            if reclaimed:
                log.info("jobs of a dead worker of this host, sent again now: %s", reclaimed)
        except Exception:  # noqa: BLE001 - the database may be away; the leases expire anyway
            log.warning("could not look for jobs of dead workers", exc_info=True)
        _reconcile_safely()
        self.tref = worker.timer.call_repeatedly(get_settings().reconcile_every_s, _reconcile_safely)

    def stop(self, worker) -> None:
        if self.tref is not None:
            self.tref.cancel()


celery.steps["worker"].add(Reconciler)

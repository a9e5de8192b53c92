"""Job state changes on the real Postgres schema: the atomic claim, fenced writes, the reconciler's pick."""

from __future__ import annotations

from datetime import timedelta

from app.core.job_state import claim_job, finish_job, renew_lease, take_orphaned_jobs, update_job
from app.core.tables import Job, JobStatus, utcnow
from app.tenants.service import create_key
from tests.helpers.factories import make_file_row, make_job


def _job(db_session, **over) -> Job:
    tenant, _ = create_key(db_session, "acme")
    return make_job(db_session, tenant, make_file_row(db_session, tenant), **over)


def test_second_claim_does_nothing_and_old_attempt_is_fenced(db_session):
    job = _job(db_session)
    assert claim_job(db_session, job.id, "w1", lease_s=60) == 1
    assert claim_job(db_session, job.id, "w2", lease_s=60) is None  # a duplicate delivery is a no-op
    assert update_job(db_session, job.id, 1, step=5)
    # lease expired: another worker may take it over as attempt 2, and attempt 1 can no longer write
    db_session.query(Job).filter_by(id=job.id).update({"lease_expires_at": utcnow() - timedelta(seconds=1)})
    db_session.commit()
    assert claim_job(db_session, job.id, "w2", lease_s=60) == 2
    assert not update_job(db_session, job.id, 1, step=99)
    assert not renew_lease(db_session, job.id, 1, lease_s=60)
    assert not finish_job(db_session, job.id, 1, JobStatus.succeeded)
    assert finish_job(db_session, job.id, 2, JobStatus.succeeded)
    db_session.refresh(job)
    assert (job.status, job.step, job.attempt) == (JobStatus.succeeded, 5, 2)


def test_reconciler_takes_expired_and_stale_queued_jobs_once(db_session):
    expired = _job(db_session, status=JobStatus.running, attempt=1, lease_expires_at=utcnow() - timedelta(seconds=5))
    stale = _job(db_session, status=JobStatus.queued)
    fresh = _job(db_session, status=JobStatus.queued)
    db_session.query(Job).filter_by(id=stale.id).update({"updated_at": utcnow() - timedelta(hours=1)})
    db_session.commit()
    taken = take_orphaned_jobs(db_session, queued_older_than_s=600)
    assert set(taken) == {expired.id, stale.id} and fresh.id not in taken
    assert take_orphaned_jobs(db_session, queued_older_than_s=600) == [expired.id]  # stale was touched

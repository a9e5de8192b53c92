"""job_events: one index on (job_id, id) instead of (job_id)

A job's events are always read by job in id order (the list newest first, a live stream after its last id) and
the live streams' shared watcher asks for a job's last event id every poll (app/jobs/job_watch.py): with both
columns in the index each is a short index range, not a scan and sort of every event of the job. The old index
is a prefix of the new one, so it goes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 13:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.create_index("ix_job_events_job_id_id", ["job_id", "id"], unique=False)
        batch_op.drop_index(batch_op.f("ix_job_events_job_id"))


def downgrade() -> None:
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_events_job_id"), ["job_id"], unique=False)
        batch_op.drop_index("ix_job_events_job_id_id")

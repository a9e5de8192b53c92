"""jobs.data_summary: the rows a job trained and evaluated on, and how many max_seq_length cut or dropped

A row longer than max_seq_length loses the beginning of its prompt; a row whose answer alone is longer is
dropped (worker/training/data.py). A user must see how many, on the job itself (issue 16).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("data_summary", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("data_summary")

"""pause and resume of jobs; the result file (CSV of step metrics) a succeeded job gets, as OpenAI's result_files

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pause_requested", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("result_file_id", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(batch_op.f("fk_jobs_result_file_id_files"), "files", ["result_file_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_result_file_id_files"), type_="foreignkey")
        batch_op.drop_column("result_file_id")
        batch_op.drop_column("pause_requested")

"""sweeps comparisons and per-checkpoint adapters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 05:18:53.150298
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing checkpoint rows get evaluated=false: before this revision their metrics were not kept per row.
    op.create_table(
        "comparisons",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("job_ids", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("prompts", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("max_new_tokens", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("results", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_comparisons_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_comparisons")),
    )
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_comparisons_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_comparisons_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_comparisons_tenant_id"), ["tenant_id"], unique=False)

    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("training_file_id", sa.String(length=40), nullable=False),
        sa.Column("validation_file_id", sa.String(length=40), nullable=True),
        sa.Column("selection_metric", sa.String(length=32), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("spec", sa.JSON(none_as_null=True), nullable=False),
        sa.Column("metadata", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("winner_job_id", sa.String(length=40), nullable=True),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_sweeps_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["training_file_id"], ["files.id"], name=op.f("fk_sweeps_training_file_id_files")),
        sa.ForeignKeyConstraint(["validation_file_id"], ["files.id"], name=op.f("fk_sweeps_validation_file_id_files")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sweeps_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweeps_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweeps_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sweeps_training_file_id"), ["training_file_id"], unique=False)

    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("evaluated", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("adapter_name", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("adapter_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("adapter_bytes", sa.BigInteger(), nullable=True))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sweep_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("train_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("peak_memory_bytes", sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_sweep_id"), ["sweep_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_sweep_id_sweeps"), "sweeps", ["sweep_id"], ["id"], ondelete="CASCADE"
        )

    # ### end Alembic commands ###


def downgrade() -> None:
    # Existing checkpoint rows get evaluated=false: before this revision their metrics were not kept per row.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_sweep_id_sweeps"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_jobs_sweep_id"))
        batch_op.drop_column("peak_memory_bytes")
        batch_op.drop_column("train_seconds")
        batch_op.drop_column("sweep_id")

    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("adapter_bytes")
        batch_op.drop_column("adapter_sha256")
        batch_op.drop_column("adapter_name")
        batch_op.drop_column("evaluated")

    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sweeps_training_file_id"))
        batch_op.drop_index(batch_op.f("ix_sweeps_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_sweeps_status"))
        batch_op.drop_index(batch_op.f("ix_sweeps_created_at"))

    op.drop_table("sweeps")
    with op.batch_alter_table("comparisons", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_comparisons_tenant_id"))
        batch_op.drop_index(batch_op.f("ix_comparisons_status"))
        batch_op.drop_index(batch_op.f("ix_comparisons_created_at"))

    op.drop_table("comparisons")
    # ### end Alembic commands ###

"""previews: the first rows of a file as a model's worker will train them (issue 16)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "previews",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("file_id", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("model_source", sa.Text(), nullable=False),
        sa.Column("max_seq_length", sa.Integer(), nullable=False),
        sa.Column("num_rows", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("result", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("error", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_previews_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"], name=op.f("fk_previews_file_id_files"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_previews")),
    )
    with op.batch_alter_table("previews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_previews_tenant_id"), ["tenant_id"], unique=False)
        batch_op.create_index("ix_previews_lookup", ["file_id", "model", "max_seq_length", "num_rows"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("previews", schema=None) as batch_op:
        batch_op.drop_index("ix_previews_lookup")
        batch_op.drop_index(batch_op.f("ix_previews_tenant_id"))
    op.drop_table("previews")

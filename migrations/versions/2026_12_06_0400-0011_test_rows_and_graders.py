"""Test rows beside validation rows, and what an upload knows of SQL schemas

- jobs.test_file_id: the file of rows that are only reported (or none: training.test_split, or no test rows);
- evaluations.split and evaluation_rows.split: 'validation' (the rows that choose) or 'test' (the rows that only
  report); every row stored before this revision was a validation row;
- files.sql_schema_rows / files.first_line_without_sql_schema: how many rows carry CREATE TABLE statements (in
  the prompt or a `schema` column), for the SQL graders' check at job creation. NULL on files uploaded before:
  unknown, checked by the worker instead.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 04:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite (the embedded default) cannot ALTER constraints in place, so alembic copies the table
    for table in ("jobs", "sweeps"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("test_file_id", sa.String(length=40), nullable=True))
            batch_op.create_foreign_key(batch_op.f(f"fk_{table}_test_file_id_files"), "files", ["test_file_id"], ["id"])
    # one base and one tuned evaluation per split; row positions count within a split
    with op.batch_alter_table("evaluations") as batch_op:
        batch_op.add_column(sa.Column("split", sa.String(length=10), nullable=False, server_default="validation"))
        batch_op.drop_constraint("uq_evaluations_job_id", type_="unique")
        batch_op.create_unique_constraint("uq_evaluations_job_id", ["job_id", "subject", "split"])
    with op.batch_alter_table("evaluation_rows") as batch_op:
        batch_op.add_column(sa.Column("split", sa.String(length=10), nullable=False, server_default="validation"))
        batch_op.drop_constraint("uq_evaluation_rows_job_id", type_="unique")
        batch_op.create_unique_constraint("uq_evaluation_rows_job_id", ["job_id", "split", "row_index"])
    with op.batch_alter_table("files") as batch_op:
        batch_op.add_column(sa.Column("sql_schema_rows", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("first_line_without_sql_schema", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("files") as batch_op:
        batch_op.drop_column("first_line_without_sql_schema")
        batch_op.drop_column("sql_schema_rows")
    op.execute("DELETE FROM evaluation_rows WHERE split = 'test'")
    op.execute("DELETE FROM evaluations WHERE split = 'test'")
    with op.batch_alter_table("evaluation_rows") as batch_op:
        batch_op.drop_constraint("uq_evaluation_rows_job_id", type_="unique")
        batch_op.create_unique_constraint("uq_evaluation_rows_job_id", ["job_id", "row_index"])
        batch_op.drop_column("split")
    with op.batch_alter_table("evaluations") as batch_op:
        batch_op.drop_constraint("uq_evaluations_job_id", type_="unique")
        batch_op.create_unique_constraint("uq_evaluations_job_id", ["job_id", "subject"])
        batch_op.drop_column("split")
    for table in ("sweeps", "jobs"):
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(batch_op.f(f"fk_{table}_test_file_id_files"), type_="foreignkey")
            batch_op.drop_column("test_file_id")

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
    op.add_column("jobs", sa.Column("test_file_id", sa.String(length=40), sa.ForeignKey("files.id"), nullable=True))
    op.add_column("sweeps", sa.Column("test_file_id", sa.String(length=40), sa.ForeignKey("files.id"), nullable=True))
    for table in ("evaluations", "evaluation_rows"):
        op.add_column(table, sa.Column("split", sa.String(length=10), nullable=False, server_default="validation"))
    # one base and one tuned evaluation per split; row positions count within a split
    op.drop_constraint("uq_evaluations_job_id", "evaluations", type_="unique")
    op.create_unique_constraint("uq_evaluations_job_id", "evaluations", ["job_id", "subject", "split"])
    op.drop_constraint("uq_evaluation_rows_job_id", "evaluation_rows", type_="unique")
    op.create_unique_constraint("uq_evaluation_rows_job_id", "evaluation_rows", ["job_id", "split", "row_index"])
    op.add_column("files", sa.Column("sql_schema_rows", sa.Integer(), nullable=True))
    op.add_column("files", sa.Column("first_line_without_sql_schema", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("files", "first_line_without_sql_schema")
    op.drop_column("files", "sql_schema_rows")
    op.execute("DELETE FROM evaluation_rows WHERE split = 'test'")
    op.execute("DELETE FROM evaluations WHERE split = 'test'")
    op.drop_constraint("uq_evaluation_rows_job_id", "evaluation_rows", type_="unique")
    op.create_unique_constraint("uq_evaluation_rows_job_id", "evaluation_rows", ["job_id", "row_index"])
    op.drop_constraint("uq_evaluations_job_id", "evaluations", type_="unique")
    op.create_unique_constraint("uq_evaluations_job_id", "evaluations", ["job_id", "subject"])
    for table in ("evaluation_rows", "evaluations"):
        op.drop_column(table, "split")
    op.drop_column("sweeps", "test_file_id")
    op.drop_column("jobs", "test_file_id")

"""The migrations on SQLite, the embedded default (`ftaas serve` migrates on start): every revision upgrades, the
newest downgrades and upgrades again. SQLite cannot ALTER a constraint in place, so a revision that does must use
alembic's batch mode; Postgres (the rest of the suite) would not notice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parents[2]


def test_every_revision_upgrades_and_the_newest_round_trips_on_sqlite(tmp_path):
    db = tmp_path / "ftaas.db"
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{db}")
    command.upgrade(config, "head")
    command.downgrade(config, "-1")
    command.upgrade(config, "head")
    with sqlite3.connect(db) as conn:
        (evaluations,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'evaluations'").fetchone()
        columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    assert "UNIQUE (job_id, subject, split)" in evaluations
    assert "test_file_id" in columns

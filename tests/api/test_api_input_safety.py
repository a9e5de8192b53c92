"""Bad input that used to reach the database as a 500: NUL characters in the path, the query or a JSON
body are a 400 naming where; an unreachable database is a 503 with Retry-After, never a 500."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.core.tables import Job

JOBS = "/v1/fine_tuning/jobs"


@pytest.mark.parametrize(
    ("url", "param"),
    [
        ("/v1/files/abc%00", "path"),
        (f"{JOBS}/ftjob-x%00", "path"),
        (f"{JOBS}/ftjob-x%00/events", "path"),
        ("/v1/sweeps/a%00/page", "path"),
        (f"{JOBS}?after=a%00", "after"),
        ("/v1/files?purpose=%00", "purpose"),
        ("/v1/models?model=%00x", "model"),
    ],
)
def test_nul_in_path_or_query_is_a_400_naming_it(client, auth, url, param):
    r = client.get(url, headers=auth)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == "invalid_value" and "NUL" in err["message"]


def test_nul_in_a_json_body_is_a_400_naming_the_field_and_stores_nothing(client, auth, db_session, train_file):
    before = db_session.scalar(select(func.count()).select_from(Job))
    body = {"model": "stories260k", "training_file": train_file.id, "suffix": "ok", "metadata": {"team": "a\x00b"}}
    r = client.post(JOBS, headers=auth, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "metadata.team"
    r = client.post(JOBS, headers=auth, json={**body, "metadata": {}, "training_file": "file-\x00"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "training_file"
    assert db_session.scalar(select(func.count()).select_from(Job)) == before
    # an escaped backslash followed by "u0000" is ordinary text, not a NUL: it reaches the route
    r = client.post(JOBS, headers=auth, json={**body, "metadata": {}, "suffix": "\\u0000"})
    assert "NUL" not in r.text


def test_an_unreachable_database_is_a_503_with_retry_after(database, auth):
    from fastapi.testclient import TestClient
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from app.api.deps import session_scope
    from app.main import app

    # nothing listens on port 1: every query fails to connect, as while Postgres restarts
    dead = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2})

    def dead_session():
        with Session(dead) as s:
            yield s

    app.dependency_overrides[session_scope] = dead_session
    try:
        with TestClient(app) as c:
            for url in ("/v1/files", JOBS, "/v1/models"):
                r = c.get(url, headers=auth)
                assert r.status_code == 503, (url, r.status_code, r.text)
                assert r.headers["retry-after"] == "5"
                assert r.json()["error"]["code"] == "database_unavailable"
    finally:
        app.dependency_overrides.clear()
        dead.dispose()

"""API keys and per-tenant limits: keys exist in the database only as hashes (a dump of the whole database
holds none), a revoked key is refused, a burst past the rate limit is a 429 with Retry-After, and a tenant
cannot have more queued or running jobs than its limit (a sweep counts its candidates)."""

from __future__ import annotations

import shutil
import subprocess
import types

import pytest
from sqlalchemy import func, select

from app.core.settings import get_settings
from app.core.tables import Job, Sweep
from app.tenants import rate_limit
from app.tenants.service import create_key, revoke_key
from tests.conftest import TEST_DB

JOBS = "/v1/fine_tuning/jobs"


def test_a_database_dump_holds_no_key(database):
    from app.core.db import get_sessionmaker

    keys = []
    with get_sessionmaker()() as s:  # committed, so the dump sees them
        for name in ("dump-a", "dump-b"):
            keys.append(create_key(s, name)[1])
        s.commit()
        revoke_key(s, keys[1])
        s.commit()
    pg_dump = shutil.which("pg_dump")
    assert pg_dump, "pg_dump is needed for this test (the postgresql-client package)"
    dump = subprocess.run(
        [pg_dump, "-h", "127.0.0.1", "-U", "postgres", "--no-owner", TEST_DB],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "api_keys" in dump and len(dump) > 10_000  # a real dump of the schema and rows
    for key in keys:
        secret = key.split("_", 1)[-1] if "_" in key else key
        assert key not in dump and secret not in dump
        assert key[-16:] not in dump  # not even its tail
    print(f"\n[keys] {len(dump):,}-character dump of {TEST_DB}: no key, no secret part of one")


def test_a_revoked_key_is_refused(client, db_session, make_key):
    key = make_key("revoked-co")
    assert client.get("/v1/files", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    revoke_key(db_session, key)
    r = client.get("/v1/files", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_a_burst_past_the_rate_limit_is_429_with_retry_after(client, auth, other_auth, monkeypatch):
    monkeypatch.setattr(get_settings(), "rate_limit_per_minute", 5)
    # one instant in the middle of a window, so the burst cannot straddle two windows
    monkeypatch.setattr(rate_limit, "time", types.SimpleNamespace(time=lambda: 1_800_000_030.0))
    codes = [client.get("/v1/files", headers=auth).status_code for _ in range(8)]
    r = client.get("/v1/files", headers=auth)
    print(f"\n[rate] burst of 9 at 5/minute: {codes + [r.status_code]}, Retry-After {r.headers.get('retry-after')}")
    assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3
    assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    assert int(r.headers["retry-after"]) == 31  # to the window's end (30 s) and a second more
    assert client.get("/v1/files", headers=other_auth).status_code == 200  # per tenant: the other is untouched


def test_active_jobs_are_capped_per_tenant_and_nothing_is_stored_past_it(
    client, auth, other_auth, db_session, train_file, monkeypatch
):
    monkeypatch.setattr(get_settings(), "max_active_jobs_per_tenant", 2)
    body = {"model": "stories260k", "training_file": train_file.id}
    assert [client.post(JOBS, headers=auth, json=body).status_code for _ in range(2)] == [200, 200]
    # counted before and after, not against 0: the live-service tests commit rows to the same database
    jobs_before = db_session.scalar(select(func.count()).select_from(Job))
    sweeps_before = db_session.scalar(select(func.count()).select_from(Sweep))
    r = client.post(JOBS, headers=auth, json=body)
    assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_active_jobs", r.text
    assert "At most 2 jobs" in r.json()["error"]["message"] and r.headers["retry-after"]
    sweep = {"training_file": train_file.id, "base": {"model": "stories260k"}}
    r = client.post("/v1/sweeps", headers=auth, json=sweep)
    assert r.status_code == 429, r.text
    assert db_session.scalar(select(func.count()).select_from(Job)) == jobs_before
    assert db_session.scalar(select(func.count()).select_from(Sweep)) == sweeps_before
    # cancelling one makes room again
    first = client.get(JOBS, headers=auth).json()["data"][0]["id"]
    assert client.post(f"{JOBS}/{first}/cancel", headers=auth).status_code == 200
    assert client.post(JOBS, headers=auth, json=body).status_code == 200


@pytest.mark.parametrize("limit", [0])
def test_zero_turns_the_limits_off(client, auth, train_file, monkeypatch, limit):
    monkeypatch.setattr(get_settings(), "rate_limit_per_minute", limit)
    monkeypatch.setattr(get_settings(), "max_active_jobs_per_tenant", limit)
    assert all(client.get("/v1/files", headers=auth).status_code == 200 for _ in range(3))

"""Live events: GET /v1/fine_tuning/jobs/{id}/events?stream=true as server-sent events (app/event_stream.py).

In process, the app's test client reads the stream while the test writes events and moves the job through its
statuses in the database, committed, from its own sessions, as the worker and the other routes do; the stream
reads with sessions of its own, as it does in production, so these rows are committed and removed afterwards.
The stream of a real tiny training job from a running service: tests/e2e/test_event_stream_live.py.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, delete, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.core.db import get_engine, get_sessionmaker
from app.core.job_state import add_event
from app.core.settings import get_settings
from app.core.tables import ApiKey, File, Job, JobEvent, JobStatus, Tenant, utcnow
from app.jobs import event_stream, job_watch
from app.jobs.schemas import EventPublic, JobPublic
from tests.helpers.factories import finished_job, make_file_row
from tests.helpers.sse import SseReader, event_ids

JOBS = "/v1/fine_tuning/jobs"


def assert_documented(messages: list[dict]) -> None:
    """Each message is one the OpenAPI document describes: its event name, its id, its data's schema."""
    kinds = event_stream.STREAM_RESPONSE["content"]["text/event-stream"]["itemSchema"]["oneOf"]
    models = {"EventPublic": EventPublic, "JobPublic": JobPublic}
    for message in messages:
        kind = next(k for k in kinds if message["event"] in k["properties"]["event"]["enum"])
        if "id" in kind["required"]:
            assert re.fullmatch(kind["properties"]["id"]["pattern"], message["id"]), message
        model = models[kind["properties"]["data"]["contentSchema"]["$ref"].rsplit("/", 1)[-1]]
        model.model_validate(message["data"])


def write_event(job_id: str, message: str, **kw) -> str:
    """One event in its own transaction, as every writer does: the job row first (its lock orders the ids)."""
    with get_sessionmaker()() as s:
        s.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow()))
        add_event(s, job_id, message, **kw)
        s.commit()
        return f"ftevent-{s.scalar(select(JobEvent.id).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()))}"


def set_status(job_id: str, status: JobStatus, message: str | None = None, **values) -> None:
    """The job's status (and columns), with its event in the same transaction, as app/job_state.py does."""
    with get_sessionmaker()() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status=status, **values))
        if message:
            add_event(s, job_id, message)
        s.commit()


@pytest.fixture
def world(database):
    """Two tenants with a key each and a running job of the first's with two events, committed; removed after."""
    from app.tenants.service import create_key

    run = uuid.uuid4().hex[:8]
    with get_sessionmaker()() as s:
        owner, key = create_key(s, f"stream-{run}")
        other, other_key = create_key(s, f"stream-other-{run}")
        file = make_file_row(s, owner)
        job = finished_job(s, owner, file, status=JobStatus.running)
        s.commit()
        ids = SimpleNamespace(tenants=[owner.id, other.id], file=file.id, job=job.id)
    first = [write_event(ids.job, "Created fine-tuning job"), write_event(ids.job, "Attempt 1 started on w")]
    yield SimpleNamespace(
        job_id=ids.job,
        events=first,
        auth={"Authorization": f"Bearer {key}"},
        other_auth={"Authorization": f"Bearer {other_key}"},
    )
    with get_sessionmaker()() as s:
        s.execute(delete(JobEvent).where(JobEvent.job_id == ids.job))
        s.execute(delete(Job).where(Job.id == ids.job))
        s.execute(delete(File).where(File.id == ids.file))
        s.execute(delete(ApiKey).where(ApiKey.tenant_id.in_(ids.tenants)))
        s.execute(delete(Tenant).where(Tenant.id.in_(ids.tenants)))
        s.commit()


@pytest.fixture
def live_client(database, monkeypatch):
    """The app as served: no session overrides, so each poll of a stream opens a session of its own."""
    from fastapi.testclient import TestClient

    from app.main import app

    settings = get_settings()
    monkeypatch.setattr(settings, "event_stream_poll_s", 0.05)
    monkeypatch.setattr(settings, "event_stream_max_s", 30.0)  # a test that hangs ends with its stream
    assert not app.dependency_overrides
    with TestClient(app) as c:
        yield c


def stream(client, world, headers: dict | None = None, **params):
    return client.stream(
        "GET",
        f"{JOBS}/{world.job_id}/events",
        headers={**world.auth, **(headers or {})},
        params={"stream": "true", **params},
    )


def test_the_backlog_then_new_events_as_they_are_written_then_the_end_with_the_job(live_client, world):
    with stream(live_client, world) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
        reader = SseReader(r)
        backlog = reader.until("status")
        assert event_ids(backlog) == world.events  # oldest first
        assert backlog[-1]["data"]["status"] == "running" and backlog[-1]["data"]["id"] == world.job_id

        step = {"step": 10, "train_loss": 1.25}
        live = [write_event(world.job_id, "Step 10: train_loss 1.2500", type="metrics", data=step)]
        got = [reader.next()]
        live.append(write_event(world.job_id, "Checkpoint saved"))
        got.append(reader.next())
        assert [(m["id"], m["event"]) for m in got] == [(live[0], "metrics"), (live[1], "message")]
        assert got[0]["data"]["data"] == step and got[0]["data"]["type"] == "metrics"

        set_status(world.job_id, JobStatus.succeeded, "Job succeeded", finished_at=utcnow(), phase="done")
        tail = reader.rest()  # the stream closes by itself
    assert [m["event"] for m in tail] == ["message", "end"]
    assert tail[0]["data"]["message"] == "Job succeeded"
    assert_documented(backlog + got + tail)
    assert tail[1]["data"]["status"] == "succeeded" and tail[1]["data"]["finished_at"]

    # every message's data is the very object the JSON list gives for that event
    streamed = [m["data"] for m in backlog + got + tail if m["event"] in ("message", "metrics")]
    listed = live_client.get(f"{JOBS}/{world.job_id}/events", headers=world.auth, params={"limit": 100}).json()
    assert streamed == list(reversed(listed["data"]))
    assert [m["id"] for m in backlog + got + tail if "id" in m] == [e["id"] for e in streamed]


def test_status_changes_are_sent_and_a_paused_job_keeps_its_stream(live_client, world):
    set_status(world.job_id, JobStatus.queued, phase="queued")
    with stream(live_client, world) as r:
        reader = SseReader(r)
        assert reader.until("status")[-1]["data"]["status"] == "queued"
        set_status(world.job_id, JobStatus.running, "Attempt 2 started on w", phase="starting")
        assert [m["event"] for m in reader.until("status")] == ["message", "status"]
        set_status(world.job_id, JobStatus.running, phase="training")  # a new phase is a status message too
        training = reader.next()
        assert (training["event"], training["data"]["progress"]["phase"]) == ("status", "training")

        set_status(world.job_id, JobStatus.paused, "Job paused with its checkpoint of step 20", phase="paused")
        paused = reader.until("status")
        assert paused[-1]["data"]["status"] == "paused"
        time.sleep(0.5)  # ten polls: a paused job may be resumed, so its stream stays open
        later = write_event(world.job_id, "still watching")
        assert reader.next()["id"] == later

        set_status(world.job_id, JobStatus.queued, "Job resumed by the user; queued", phase="queued")
        assert reader.until("status")[-1]["data"]["status"] == "queued"
        set_status(world.job_id, JobStatus.cancelled, "Job cancelled by the user", finished_at=utcnow())
        tail = reader.rest()
    assert [m["event"] for m in tail] == ["message", "end"] and tail[-1]["data"]["status"] == "cancelled"
    assert_documented(paused + tail)


def test_a_reconnect_with_last_event_id_resumes_without_duplicates_or_gaps(live_client, world, monkeypatch):
    monkeypatch.setattr(event_stream, "BATCH", 2)  # backlogs read in several pieces, as a long one is
    every = world.events + [write_event(world.job_id, f"line {i}") for i in range(4)]  # 6 events
    seen: list[str] = []
    with stream(live_client, world) as r:
        reader = SseReader(r)
        seen += [reader.next()["id"] for _ in range(3)]
    # the client went away; the job goes on
    every += [write_event(world.job_id, "written while nobody watched"), write_event(world.job_id, "and one more")]
    with stream(live_client, world, headers={"Last-Event-ID": seen[-1]}) as r:
        seen += event_ids(SseReader(r).until("status"))
    assert seen == every  # each event once, in order

    with stream(live_client, world, after=every[4]) as r:  # `after`: the same, for a client without the header
        assert event_ids(SseReader(r).until("status")) == every[5:]
    with stream(live_client, world, headers={"Last-Event-ID": every[6]}, after=every[0]) as r:  # the header wins
        assert event_ids(SseReader(r).until("status")) == every[7:]
    with stream(live_client, world, headers={"Last-Event-ID": "ftevent-99999999999"}) as r:  # past every event
        assert [m["event"] for m in SseReader(r).until("status")] == ["status"]

    with stream(live_client, world, headers={"Last-Event-ID": "7"}, after=every[6]) as r:  # not our id: ignored
        assert event_ids(SseReader(r).until("status")) == every[7:]


def test_another_tenants_job_is_a_404_before_any_stream_starts(live_client, world):
    theirs = live_client.get(f"{JOBS}/{world.job_id}/events", headers=world.other_auth, params={"stream": "true"})
    missing = live_client.get(
        f"{JOBS}/ftjob-000000000000000000000000/events", headers=world.auth, params={"stream": "true"}
    )
    assert theirs.status_code == missing.status_code == 404
    assert theirs.headers["content-type"] == "application/json"
    scrub = re.compile(r"ftjob-[0-9a-f]{24}")
    assert scrub.sub("<id>", theirs.text) == scrub.sub("<id>", missing.text)
    anonymous = live_client.get(f"{JOBS}/{world.job_id}/events", params={"stream": "true"})
    assert anonymous.status_code == 401 and anonymous.headers["content-type"] == "application/json"


def test_without_stream_the_json_list_is_unchanged(live_client, world):
    newer = write_event(world.job_id, "third")
    for params in ({}, {"stream": "false"}):
        r = live_client.get(f"{JOBS}/{world.job_id}/events", headers=world.auth, params=params)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["object"] == "list" and body["has_more"] is False
        assert [e["id"] for e in body["data"]] == [newer, *reversed(world.events)]  # newest first
    page = live_client.get(
        f"{JOBS}/{world.job_id}/events", headers=world.auth, params={"limit": 1, "after": newer}
    ).json()
    assert [e["id"] for e in page["data"]] == [world.events[1]] and page["has_more"] is True  # `after`: older


def test_a_stream_holds_no_connection_between_polls_and_stops_polling_when_the_client_leaves(
    live_client, world, monkeypatch
):
    polls, reads = [], []  # the process's watcher polling the job's stamp; the stream reading the job
    read_stamps, read_since = job_watch.read_stamps, event_stream.read_since
    monkeypatch.setattr(job_watch, "read_stamps", lambda *a: polls.append(1) or read_stamps(*a))
    monkeypatch.setattr(event_stream, "read_since", lambda *a: reads.append(1) or read_since(*a))
    # A second engine, outside the app's pool, looks at what the app holds.
    watcher = create_engine(get_settings().database_url, poolclass=NullPool)
    held_transactions = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND state LIKE 'idle in transaction%' AND now() - state_change > interval '0.5 seconds'"
    )
    checked_out, in_transaction = [], []
    with stream(live_client, world) as r:
        reader = SseReader(r)  # kept: dropping the reader closes the response, as a client that leaves
        reader.until("status")  # the request's own session is done with; the stream polls
        before, reads_before = len(polls), len(reads)
        with watcher.connect() as conn:
            for _ in range(20):
                checked_out.append(get_engine().pool.checkedout())
                in_transaction.append(conn.execute(held_transactions).scalar())
                time.sleep(0.05)
        assert len(polls) - before >= 10  # the watcher kept polling all along
        assert len(reads) - reads_before <= 1  # and the stream, its job unchanged, read nothing (one: the first poll)
    watcher.dispose()
    assert min(checked_out) == 0, checked_out  # between polls no connection is out of the pool
    assert max(in_transaction) == 0, in_transaction  # and none sits in an open transaction
    time.sleep(0.2)
    after_close = len(polls)
    time.sleep(0.5)
    assert len(polls) == after_close  # the client left: its process's watcher, with nobody to watch for, stopped


def test_an_idle_stream_sends_keepalives_and_closes_at_its_lifetime(live_client, world, monkeypatch):
    monkeypatch.setattr(event_stream, "KEEPALIVE_S", 0.2)
    monkeypatch.setattr(get_settings(), "event_stream_max_s", 1.2)
    started = time.monotonic()
    with stream(live_client, world) as r:
        reader = SseReader(r)
        messages = reader.rest()
    elapsed = time.monotonic() - started
    assert [m["event"] for m in messages] == ["message", "message", "status"]  # no `end`: the job still runs
    assert reader.comments.count("ping") >= 3
    assert reader.comments[-1].startswith("stream lifetime reached")
    assert 1.1 < elapsed < 5


def test_a_stream_outlives_a_database_that_goes_away_for_a_while(live_client, world, monkeypatch):
    calls = []
    read_since = event_stream.read_since

    def flaky(*args):
        calls.append(1)
        if 2 <= len(calls) <= 6:  # five polls in a row find no database
            raise OperationalError("SELECT", {}, ConnectionError("server closed the connection"))
        return read_since(*args)

    monkeypatch.setattr(event_stream, "read_since", flaky)
    with stream(live_client, world) as r:
        reader = SseReader(r)
        reader.until("status")
        later = write_event(world.job_id, "written while the stream could not read")
        assert reader.next()["id"] == later  # once the database answers again
    assert len(calls) > 6


def test_streams_end_when_the_server_is_asked_to_stop(live_client, world, monkeypatch):
    """`ftaas serve` sets SHUTTING_DOWN on SIGTERM (app/cli.py): uvicorn's graceful shutdown waits for every open
    response, so a stream that stayed open would hold it until its job ended."""
    monkeypatch.setattr(event_stream, "SHUTTING_DOWN", threading.Event())
    with stream(live_client, world) as r:
        reader = SseReader(r)
        reader.until("status")
        event_stream.SHUTTING_DOWN.set()
        assert reader.rest() == []  # closed, with no `end`: the job goes on
    assert reader.comments[-1].startswith("server shutting down; reconnect with Last-Event-ID")


def test_a_stream_through_the_test_transaction(client, auth, db_session, acme, train_file):
    """What Schemathesis streams: the `client` fixture points the stream's sessions at the test's too."""
    job = finished_job(db_session, acme, train_file, status=JobStatus.succeeded)
    db_session.add(JobEvent(job_id=job.id, type="metrics", message="step 5", data={"step": 5, "train_loss": 2.0}))
    db_session.commit()
    r = client.get(f"{JOBS}/{job.id}/events", headers=auth, params={"stream": "true"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = re.findall(r"^event: (\w+)$", r.text, flags=re.M)
    assert events == ["metrics", "end"]

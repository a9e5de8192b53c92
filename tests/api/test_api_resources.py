"""resources.gpus at the API: a job on several GPUs is accepted only where a worker of the deployment owns that
many (the `workers` table, as workers advertise themselves), refused with a 400 naming the field otherwise and
nothing stored; an accepted one is sent to the queue of its size, which only workers that large consume, largest
first (app/core/queue.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from sqlalchemy import func, select

from app.core.fleet import advertise
from app.core.queue import train_queue, worker_queues
from app.core.tables import Job, Sweep, Worker, utcnow
from tests.conftest import REDIS_URL
from tests.helpers.files import jsonl

JOBS, SWEEPS = "/v1/fine_tuning/jobs", "/v1/sweeps"


@pytest.fixture
def train_file(client, auth) -> str:
    rows = [{"prompt": f"{i}+{i}=", "completion": str(2 * i)} for i in range(12)]
    r = client.post("/v1/files", headers=auth, files={"file": ("t.jsonl", jsonl(rows))}, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return r.json()["id"]


@pytest.fixture
def queues():
    """The broker's training queues of every size, emptied before and after."""
    client = redis.Redis.from_url(REDIS_URL)
    names = worker_queues(8)
    client.delete(*names)
    yield lambda name: [m.decode() for m in client.lrange(name, 0, -1)]
    client.delete(*names)


def jobs(db_session) -> int:
    db_session.expire_all()
    return db_session.scalar(select(func.count()).select_from(Job))


def create(client, auth, train_file: str, **body):
    return client.post(JOBS, headers=auth, json={"model": "stories260k", "training_file": train_file, **body})


def test_several_gpus_are_refused_until_a_worker_that_large_is_seen(client, auth, db_session, train_file, queues):
    before = jobs(db_session)
    r = create(client, auth, train_file, resources={"gpus": 2})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "resources.gpus" and error["code"] == "not_enough_gpus"
    assert "has 0 GPUs" in error["message"]
    advertise(db_session, "host-a:1", 1, worker_queues(1))
    r = create(client, auth, train_file, resources={"gpus": 2})
    assert r.status_code == 400 and "has 1 GPU:" in r.json()["error"]["message"]
    assert jobs(db_session) == before  # nothing stored

    advertise(db_session, "host-b:1", 4, worker_queues(4))
    r = create(client, auth, train_file, resources={"gpus": 2})
    assert r.status_code == 200, r.text
    job = r.json()
    assert job["resources"] == {"gpus": 2, "strategy": "auto"}
    assert any(job["id"] in m for m in queues(train_queue(2)))  # the queue of its size
    assert not any(job["id"] in m for m in queues(train_queue(1)))
    one = create(client, auth, train_file).json()
    assert one["resources"] == {"gpus": 1, "strategy": "auto"} and any(one["id"] in m for m in queues(train_queue(1)))
    r = create(client, auth, train_file, resources={"gpus": 5})
    assert r.status_code == 400 and "has 4 GPUs" in r.json()["error"]["message"]


def test_a_worker_not_seen_for_a_day_no_longer_counts(client, auth, db_session, train_file, queues):
    advertise(db_session, "host-c:1", 8, worker_queues(8))
    db_session.get(Worker, "host-c:1").seen_at = utcnow() - timedelta(days=2)
    db_session.commit()
    assert create(client, auth, train_file, resources={"gpus": 8}).status_code == 400
    advertise(db_session, "host-c:1", 8, worker_queues(8))  # its next reconcile pass
    assert create(client, auth, train_file, resources={"gpus": 8}).status_code == 200


def test_a_worker_gone_longer_than_it_counts_is_forgotten(db_session):
    """A worker's name holds its pid: every restart is a new row, deleted by the next pass once it no longer counts."""
    advertise(db_session, "host-e:1", 2, worker_queues(2))
    db_session.get(Worker, "host-e:1").seen_at = utcnow() - timedelta(days=2)
    db_session.commit()
    advertise(db_session, "host-e:2", 2, worker_queues(2), forget_after_s=86400)  # its successor's pass
    db_session.expire_all()
    assert db_session.get(Worker, "host-e:1") is None and db_session.get(Worker, "host-e:2") is not None


def test_one_gpu_is_always_accepted_and_the_field_is_bounded(client, auth, db_session, train_file, queues):
    assert create(client, auth, train_file, resources={"gpus": 1}).status_code == 200  # no worker seen at all
    for gpus in (9, 0):
        r = create(client, auth, train_file, resources={"gpus": gpus})
        assert r.status_code == 400 and r.json()["error"]["param"] == "resources.gpus", r.text


def test_a_sweep_candidate_on_more_gpus_than_any_worker_is_refused_by_name(client, auth, db_session, train_file):
    advertise(db_session, "host-d:1", 2, worker_queues(2))
    db_session.expire_all()
    sweeps = db_session.scalar(select(func.count()).select_from(Sweep))
    body = {
        "training_file": train_file,
        "base": {"model": "stories260k"},
        "candidates": [{"adapter": {"r": 4}}, {"adapter": {"r": 8}, "resources": {"gpus": 4}}],
    }
    r = client.post(SWEEPS, headers=auth, json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "candidates[1].resources.gpus"
    db_session.expire_all()
    assert db_session.scalar(select(func.count()).select_from(Sweep)) == sweeps


def test_a_worker_takes_the_largest_jobs_it_can_first():
    assert worker_queues(1) == worker_queues(0) == [train_queue(1)]
    assert worker_queues(4) == [train_queue(4), train_queue(3), train_queue(2), train_queue(1)]
    assert len(set(worker_queues(8))) == 8


def test_a_worker_takes_a_queued_job_on_several_gpus_before_the_one_gpu_jobs_ahead_of_it(queues, database):
    """Through the broker as a worker of two GPUs reads it (kombu's Redis transport with the deployment's transport
    options): every queued two-GPU job comes out before the one-GPU jobs, whatever their order (kombu's default
    round-robin would alternate: big-1, small-1, big-2, small-2)."""
    from kombu import Connection, Consumer, Queue

    from app.core.celery_app import broker_options
    from app.core.queue import enqueue_job
    from app.core.settings import get_settings

    for job_id, gpus in (("ftjob-small-1", 1), ("ftjob-big-1", 2), ("ftjob-big-2", 2), ("ftjob-small-2", 1)):
        assert enqueue_job(job_id, gpus)
    settings = get_settings()
    order: list[str] = []
    with Connection(settings.broker_url, transport_options=broker_options(settings)) as conn:

        def take(body, message):
            order.append(message.headers["argsrepr"])
            message.ack()

        with Consumer(conn, [Queue(q) for q in worker_queues(2)], callbacks=[take], accept=["json"], prefetch_count=1):
            while len(order) < 4:
                conn.drain_events(timeout=10)
    assert [a.strip("[(',)]") for a in order] == ["ftjob-big-1", "ftjob-big-2", "ftjob-small-1", "ftjob-small-2"]


@pytest.mark.parametrize(
    "body,message",
    [
        ({"resources": {"gpus": 1, "strategy": "fsdp"}}, "resources.gpus must be 2 or more"),
        ({"resources": {"gpus": 2, "strategy": "fsdp"}, "adapter": {"type": "prompt_tuning"}}, "prompt_tuning"),
    ],
    ids=["one-gpu", "prompt-tuning"],
)
def test_a_strategy_that_cannot_run_is_refused_naming_it(client, auth, db_session, train_file, body, message):
    advertise(db_session, "host-a:1", 2, worker_queues(2))
    before = jobs(db_session)
    r = create(client, auth, train_file, **body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "resources.strategy" and message in r.json()["error"]["message"]
    assert jobs(db_session) == before


def test_preference_tuning_is_not_sharded(client, auth, db_session):
    """Its reference pass runs on whole models (worker/training/sharding.py): fsdp is refused, naming the field."""
    from tests.api.test_api_dpo import PREFERENCE_JSONL
    from tests.api.test_api_jobs import upload

    advertise(db_session, "host-a:1", 2, worker_queues(2))
    prefs = upload(client, auth, PREFERENCE_JSONL, name="prefs.jsonl")
    before = jobs(db_session)
    r = create(client, auth, prefs, method={"type": "dpo"}, resources={"gpus": 2, "strategy": "fsdp"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "resources.strategy", r.text
    assert jobs(db_session) == before


def test_a_sharded_job_is_stored_with_its_strategy(client, auth, db_session, train_file, queues):
    advertise(db_session, "host-a:1", 2, worker_queues(2))
    r = create(client, auth, train_file, resources={"gpus": 2, "strategy": "fsdp"}, adapter={"type": "full"})
    assert r.status_code == 200, r.text
    assert r.json()["resources"] == {"gpus": 2, "strategy": "fsdp"}
    assert queues(train_queue(2)) and not queues(train_queue(1))
    r = create(client, auth, train_file, resources={"gpus": 2, "strategy": "sharded"})
    assert r.status_code == 400 and "resources.strategy" in r.text

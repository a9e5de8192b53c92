"""GET /metrics in Prometheus' text format: requests by route template with their latency, jobs by status and the
queues' depth, read at the scrape, so the figures move as the service is used."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from tests.api.test_api_jobs import create_ok, upload


def scrape(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_requests_by_route_template_and_jobs_by_status(client, auth, db_session):
    before = scrape(client)
    file_id = upload(client, auth)
    create_ok(client, auth, file_id)
    create_ok(client, auth, file_id)
    client.get("/v1/fine_tuning/jobs/ftjob-nope", headers=auth)
    after = scrape(client)

    route = {"handler": "/v1/fine_tuning/jobs", "method": "POST", "status": "2xx"}
    assert value(after, "http_requests_total", **route) - value(before, "http_requests_total", **route) == 2
    missing = {"handler": "/v1/fine_tuning/jobs/{job_id}", "method": "GET", "status": "4xx"}
    assert value(after, "http_requests_total", **missing) - value(before, "http_requests_total", **missing) == 1
    assert not any("ftjob-nope" in str(labels) for _, labels in after)  # templates, never raw paths
    assert any(name == "http_request_duration_seconds_count" for name, _ in after)
    assert value(after, "ftaas_jobs", status="queued") - value(before, "ftaas_jobs", status="queued") == 2
    assert ("ftaas_jobs", (("status", "succeeded"),)) in after  # every status, zeros included
    assert any(name == "ftaas_queue_depth" for name, _ in after)
    assert not any(re.search(r"/metrics|/healthz", str(labels)) for _, labels in after)  # probes not counted


def test_the_queue_of_every_job_size_the_fleet_runs_is_measured(client, db_session):
    """A queued job on two GPUs waits in its own queue (app/core/queue.py): the scrape shows it there."""
    import redis

    from app.core.fleet import advertise
    from app.core.queue import enqueue_job, train_queue, worker_queues
    from tests.conftest import REDIS_URL

    broker = redis.Redis.from_url(REDIS_URL)
    two = train_queue(2)
    broker.delete(two)
    try:
        assert ("ftaas_queue_depth", (("queue", two),)) not in scrape(client)  # no worker that large: not shown
        advertise(db_session, "host-m:1", 2, worker_queues(2))
        assert enqueue_job("ftjob-waiting", gpus=2)
        after = scrape(client)
        assert value(after, "ftaas_queue_depth", queue=two) == 1
        assert ("ftaas_queue_depth", (("queue", train_queue(1)),)) in after
    finally:
        broker.delete(two)

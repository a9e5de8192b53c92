"""Live events from a running service (API under uvicorn and a Celery worker): the stream of a real tiny training
job, read with httpx from its creation to its end (the stream's behaviour in process:
tests/api/test_event_stream.py)."""

from __future__ import annotations

import time

import httpx

from tests.conftest import DATASETS, REPORT
from tests.helpers.e2e_service import client_for, running_service, upload, worker_logs
from tests.helpers.sse import SseReader, event_ids

JOBS = "/v1/fine_tuning/jobs"


def test_a_real_job_streams_its_metrics_while_it_trains_and_the_stream_ends_with_it(tmp_path):
    """One small LoRA job on the tiny Llama, watched from its creation to its end through one stream."""
    rows = tmp_path / "train.jsonl"
    with open(DATASETS / "wikisql" / "train.jsonl") as fh:
        rows.write_text("".join(fh.readlines()[:500]))
    with running_service(workers=1) as service:
        c = client_for(service)
        train = upload(c, rows, completion_separator="\nA: ")
        body = {
            "model": "stories260k",
            "training_file": train["id"],
            "seed": 7,
            "adapter": {"type": "lora", "r": 8},
            # 500 rows: one epoch of about 30 steps, a metrics event every 4: some 15 s of training on 2 cores
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 16}}},
            "training": {"learning_rate": 5e-3, "logging_steps": 4},
            "evaluation": {"metrics": ["perplexity"], "max_rows": 10},
        }
        r = c.post(f"{JOBS}", json=body)
        assert r.status_code == 200, r.text
        job_id, created = r.json()["id"], time.monotonic()

        received: list[dict] = []
        first_at = None
        with httpx.Client(base_url=service["base"], headers={"Authorization": f"Bearer {service['key']}"}) as sse:
            opened = time.monotonic()
            timeout = httpx.Timeout(10, read=60)  # a ping every 15 s at the latest
            with sse.stream("GET", f"{JOBS}/{job_id}/events", params={"stream": "true"}, timeout=timeout) as s:
                assert s.status_code == 200
                reader = SseReader(s)
                while (message := reader.next()) is not None:
                    first_at = first_at or message["at"]
                    received.append(message)
            stream_closed = time.monotonic()
        job = c.get(f"{JOBS}/{job_id}").json()
        assert job["status"] == "succeeded", f"{job['error']}\n{worker_logs(service)}"

        ends = [m for m in received if m["event"] == "end"]
        assert len(ends) == 1 and received[-1] is ends[0] and ends[0]["data"]["status"] == "succeeded"
        statuses = [m["data"]["status"] for m in received if m["event"] == "status"]
        assert "running" in statuses  # seen change as it happened: queued (or already running), then running
        ids = [int(i.removeprefix("ftevent-")) for i in event_ids(received)]
        assert ids == sorted(set(ids))  # in order, each once
        listed = c.get(f"{JOBS}/{job_id}/events", params={"limit": 1000}).json()["data"]
        assert event_ids(received) == [e["id"] for e in reversed(listed)]  # nothing missed

        metrics = [m for m in received if m["event"] == "metrics" and "train_loss" in (m["data"]["data"] or {})]
        assert len(metrics) >= 4, [m["data"]["message"] for m in received]
        # Live, not all at the end: metrics arrive spread over the training, each soon after it was written.
        spread = metrics[-1]["at"] - metrics[0]["at"]
        end_at = ends[0]["at"]
        assert spread > 2.0 and end_at - metrics[0]["at"] > 3.0, (spread, end_at - metrics[0]["at"])
        wall_offset = time.time() - time.monotonic()
        lags = sorted(m["at"] + wall_offset - m["data"]["created_at"] for m in metrics)  # created_at: whole seconds
        median_lag = lags[len(lags) // 2]
        assert median_lag < 2.5, lags
        # the job's end (finished_at, whole seconds) to the stream's close
        after_end = stream_closed + wall_offset - ends[0]["data"]["finished_at"]
        assert after_end < 3.0, after_end

    figure = (
        f"[sse] {len(received)} messages ({len(ids)} events, {len(metrics)} metrics, {len(statuses)} status), "
        f"first after {first_at - opened:.2f} s, metrics spread over {spread:.1f} s of a {end_at - created:.0f} s job, "
        f"median metrics lag {median_lag:.2f} s, stream closed {after_end:.2f} s after finished_at (whole seconds)"
    )
    REPORT.append(figure)
    print(figure)

"""A fleet you can watch (issue 17, item 6), on the live service (API under uvicorn, one Celery worker, JSON logs):
one small LoRA job on the tiny Llama, created with an X-Request-ID, while both /metrics endpoints are scraped.

- the figures move: the API's jobs by status, the worker's job phase, step, step time, useful tokens/s, its step
  and token counters, and its attempts by outcome;
- the request id is in the API's, the worker's and the training child's JSON lines of that job.

One job serves both tests (a module fixture): a service start and a training run are the slow part."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DATASETS, REPORT
from tests.helpers.e2e_service import JOB_TIMEOUT_S, client_for, free_port, running_service, upload, worker_logs

JOBS = "/v1/fine_tuning/jobs"
REQUEST_ID = "fleet-watch-7f3a"


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def json_lines(path: Path) -> list[dict]:
    """The file's JSON log lines (a child's output also holds plain lines of libraries that print)."""
    lines = []
    for line in path.read_text().splitlines():
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict) and "message" in parsed:
            lines.append(parsed)
    return lines


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    rows = tmp_path_factory.mktemp("fleet") / "train.jsonl"
    with open(DATASETS / "wikisql" / "train.jsonl") as fh:
        rows.write_text("".join(fh.readlines()[:400]))
    port = free_port()
    env = {"FTAAS_LOG_FORMAT": "json", "FTAAS_WORKER_METRICS_PORT": str(port)}
    with running_service(workers=1, extra_env=env, api_loglevel="info") as service:
        c = client_for(service)
        api_metrics, worker_metrics = f"{service['base']}/metrics", f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 60
        while True:  # the worker's port opens as it starts
            try:
                idle = scrape(worker_metrics)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, worker_logs(service)
                time.sleep(0.5)
        api_before = scrape(api_metrics)
        train = upload(c, rows, completion_separator="\nA: ")
        body = {
            "model": "stories260k",
            "training_file": train["id"],
            "seed": 7,
            "adapter": {"type": "lora", "r": 8},
            # 400 rows: one epoch of about 25 steps, some seconds of training on 2 cores
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 16}}},
            "evaluation": {"metrics": ["perplexity"], "max_rows": 8},
        }
        r = c.post(JOBS, json=body, headers={"X-Request-ID": REQUEST_ID})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == REQUEST_ID
        job_id = r.json()["id"]

        during: list[tuple[dict, dict]] = []  # (worker, api) scrapes while the job is open
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := c.get(f"{JOBS}/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
            during.append((scrape(worker_metrics), scrape(api_metrics)))
            assert time.monotonic() < deadline, worker_logs(service)
            time.sleep(0.3)
        assert job["status"] == "succeeded", f"{job['error']}\n{worker_logs(service)}"
        deadline = time.monotonic() + 60
        while not value(after := scrape(worker_metrics), "ftaas_worker_jobs_total", outcome="succeeded"):
            assert time.monotonic() < deadline, "the attempt's outcome was never counted"  # counted as the task ends
            time.sleep(0.3)
        yield {
            "job_id": job_id,
            "idle": idle,
            "during": during,
            "after": after,
            "api_before": api_before,
            "api_after": scrape(api_metrics),
            "logs": service["logs"],
            "attempt_log": Path(service["env"]["FTAAS_CACHE_DIR"]) / "jobs" / job_id / "attempt-1.log",
        }


def test_both_endpoints_show_the_figures_move_while_a_job_runs(watched):
    job, during = watched["job_id"], watched["during"]
    training = [w for w, _ in during if value(w, "ftaas_worker_job_phase", job_id=job, phase="training") == 1]
    assert len(training) >= 2, f"{len(during)} scrapes, {len(training)} in training"
    steps = [value(w, "ftaas_worker_job_step", job_id=job) for w in training]
    assert steps == sorted(steps) and steps[-1] > steps[0], steps  # the step moves on
    last = training[-1]
    assert value(last, "ftaas_worker_job_total_steps", job_id=job) >= steps[-1]
    assert value(last, "ftaas_worker_step_seconds", job_id=job) > 0
    assert value(last, "ftaas_worker_tokens_per_second", job_id=job) > 0
    assert not any(name == "ftaas_worker_gpu_memory_bytes" for name, _ in last)  # a CPU: no CUDA figures
    phases = {dict(labels)["phase"] for w, _ in during for name, labels in w if name == "ftaas_worker_job_phase"}
    # the phases the child went through stay as 0 beside the current one while it lives. A LoRA job evaluates its
    # base after training (adapter switched off), and that and the tuned evaluation take well under a scrape's
    # 0.3 s on 8 rows, so only the phases up to training are sure to be seen; every one seen is a known phase.
    assert {"loading_data", "loading_model", "training"} <= phases, phases
    known = {"loading_data", "loading_model", "evaluating_base", "reference", "training", "evaluating", "packaging"}
    assert phases <= known, phases

    idle, after = watched["idle"], watched["after"]
    assert not any(name.startswith("ftaas_worker_job_") for name, _ in idle)  # nothing running, nothing shown
    assert not any(name.startswith("ftaas_worker_job_") for name, _ in after)  # the child's series went with it
    assert value(after, "ftaas_worker_steps_total") >= steps[-1] > (value(idle, "ftaas_worker_steps_total") or 0)
    assert value(after, "ftaas_worker_tokens_total") > 0
    assert value(after, "ftaas_worker_jobs_total", outcome="succeeded") == 1

    api_before, api_after = watched["api_before"], watched["api_after"]
    assert any(value(a, "ftaas_jobs", status="running") == 1 for _, a in during)
    assert value(api_after, "ftaas_jobs", status="succeeded") - value(api_before, "ftaas_jobs", status="succeeded") == 1
    created = {"handler": "/v1/fine_tuning/jobs", "method": "POST", "status": "2xx"}
    assert value(api_after, "http_requests_total", **created) == 1

    tokens_s = max(value(w, "ftaas_worker_tokens_per_second", job_id=job) or 0 for w in training)
    REPORT.append(
        f"[fleet] {len(during)} scrapes of both /metrics while the job ran, {len(training)} in training: step "
        f"{steps[0]:.0f} -> {steps[-1]:.0f}, up to {tokens_s:.0f} useful tokens/s, phases {sorted(phases)}"
    )


def test_the_request_id_follows_the_job_into_api_worker_and_child_json_lines(watched):
    job = watched["job_id"]
    api = json_lines(watched["logs"] / "api.log")
    worker = json_lines(watched["logs"] / "worker.log")
    child = json_lines(watched["attempt_log"])

    def ours(lines: list[dict]) -> list[dict]:
        return [line for line in lines if line.get("request_id") == REQUEST_ID]

    assert any(line["job_id"] == job and line["message"] == f"created job {job}" for line in ours(api)), api[-20:]
    assert any("POST /v1/fine_tuning/jobs" in line["message"] for line in ours(api))  # uvicorn's access line
    assert {line["component"] for line in api} == {"api"}
    tasks = [line for line in ours(worker) if line["job_id"] == job]
    assert any("starting training child" in line["message"] for line in tasks), worker[-20:]
    assert {line["component"] for line in worker} == {"worker"}
    started = [line for line in ours(child) if line["job_id"] == job and "training child started" in line["message"]]
    assert started and started[0]["component"] == "child", child[:20]
    assert all(line["request_id"] == REQUEST_ID for line in child)  # every line of the child is the job's
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in api + worker + child)

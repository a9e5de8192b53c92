"""A job on two GPUs through the real service on the CPU: a worker that says it owns two (FTAAS_WORKER_GPUS; gloo
stands in for NCCL) advertises them, the API then accepts resources.gpus 2, the worker's training task launches
the job's ranks through torchrun, and the job trains, evaluates and ships once. A second such job cancelled in
training loses every rank, and torchrun, within seconds."""

from __future__ import annotations

import time

from tests.conftest import DATASETS
from tests.helpers.e2e_service import child_pids, client_for, events_of, running_service, upload, wait_for_jobs

JOBS = "/v1/fine_tuning/jobs"
BODY = {
    "model": "stories260k",
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}},
    "adapter": {"type": "lora", "r": 8},
    "training": {"micro_batch_size": 2},
    "evaluation": {"metrics": ["perplexity", "rouge"], "max_rows": 12, "max_new_tokens": 8},
    "resources": {"gpus": 2},
}


def test_a_two_gpu_job_through_the_service_trains_once_and_a_cancel_stops_every_rank():
    env = {"FTAAS_WORKER_GPUS": "2", "FTAAS_TORCH_THREADS": "1"}
    with running_service(extra_env=env) as svc, client_for(svc) as c:
        train = upload(c, DATASETS / "wikisql" / "train.jsonl", completion_separator="\nA: ")
        deadline = time.monotonic() + 60
        while True:  # the worker advertises itself as it starts, a moment after the API is ready
            r = c.post(JOBS, json={**BODY, "training_file": train["id"]})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            assert r.json()["error"]["code"] == "not_enough_gpus", r.text
            time.sleep(0.5)
        assert r.status_code == 200, r.text
        job_id, submitted = r.json()["id"], time.time()
        assert r.json()["resources"] == {"gpus": 2, "strategy": "auto"}
        ((job, ended),) = wait_for_jobs(c, [job_id], svc["logs"]).values()
        took = ended - submitted
        events = events_of(c, job_id)
        assert job["status"] == "succeeded", (job["error"], events[-5:])
        assert sum(e.startswith("First step") for e in events) == 1
        assert sum(e == "Fine-tuned model evaluated" for e in events) == 1  # the main rank alone evaluates
        evaluation = c.get(f"{JOBS}/{job_id}/evaluation").json()
        assert evaluation["num_rows"] == 12 and evaluation["tuned"]["eval_loss"] < evaluation["base"]["eval_loss"]
        adapter = c.get(f"{JOBS}/{job_id}/adapter")
        assert adapter.status_code == 200 and len(adapter.content) > 1000
        log = (svc["logs"] / "worker.log").read_text()
        assert "starting training child (2 GPUs)" in log

        second = c.post(JOBS, json={**BODY, "training_file": train["id"]}).json()["id"]
        deadline = time.monotonic() + 180
        while c.get(f"{JOBS}/{second}").json()["progress"]["phase"] != "training":
            assert time.monotonic() < deadline, "the second job never reached training"
            time.sleep(0.2)
        ranks = child_pids(second)
        assert len(ranks) == 3, ranks  # torchrun and its two ranks
        t = time.monotonic()
        assert c.post(f"{JOBS}/{second}/cancel").json()["status"] == "cancelled"
        while child_pids(second):
            assert time.monotonic() - t < 30, "a rank of the cancelled job is still running"
            time.sleep(0.05)
        stopped = time.monotonic() - t
    print(
        f"\n[multi-gpu] a 2-rank job (gloo) took {took:.0f}s through the service; a cancel stopped its 3 processes "
        f"in {stopped:.2f}s"
    )
    assert stopped <= 10.0

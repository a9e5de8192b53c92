"""A job on two GPUs' worth of processes, end to end on the CPU: the training task launches its child through
torchrun (gloo), the main rank alone writes, and the job trains as one process with the same global batch would.
A rank killed mid-training ends the attempt (no rank left waiting), and the retry resumes from the checkpoint.
The training task's own code runs here (claim, spawn, supervise, outcome), with the broker's resend recorded."""

from __future__ import annotations

import re
import tarfile
import threading
import time

import psutil
import pytest
import torch
from sqlalchemy import select

from tests.helpers.child import queued_job, run_job, sql_rows, stored

BODY = {
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}}},
    "adapter": {"type": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"},
    # four micro-batches a step: two for each rank
    "training": {"learning_rate": 0.005, "micro_batch_size": 2, "logging_steps": 1},
    "evaluation": {"metrics": ["perplexity"], "max_rows": 12},
}


def step_losses(job_id: str) -> list[tuple[int, float]]:
    from app.core.db import get_sessionmaker
    from app.core.tables import JobEvent

    with get_sessionmaker()() as s:
        events = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")).all()
    logged = [e.data for e in events if e.data and "train_loss" in e.data and "step" in e.data]
    return sorted((d["step"], d["train_loss"]) for d in logged)


def attempt_log(job_id: str, attempt: int = 1) -> str:
    """The end of an attempt's log (every rank's output): what a failed assertion shows."""
    from app.core.storage import JobFiles

    return JobFiles(job_id).attempt_log(attempt).read_text()[-20000:]


def ranks_of(job_id: str) -> list[psutil.Process]:
    from worker.tasks.supervise import training_children

    return training_children(psutil.Process())


def act_after_a_checkpoint(job_id: str, act) -> tuple[threading.Thread, list[str], float]:
    """Attempt 1 of the job by the training task, on a thread; `act()` once a checkpoint before the last step is
    stored (until it returns True). Returns the thread, its result (once joined) and when `act` succeeded."""
    from app.core.db import get_sessionmaker
    from app.core.tables import Checkpoint, Job
    from worker.tasks.training import run_attempt

    results: list[str] = []
    first = threading.Thread(target=lambda: results.append(run_attempt(job_id)))
    first.start()
    deadline, acted = time.monotonic() + 300, None
    with get_sessionmaker()() as s:
        while time.monotonic() < deadline and first.is_alive() and acted is None:
            steps = s.scalars(select(Checkpoint.step).where(Checkpoint.job_id == job_id)).all()
            total = s.get(Job, job_id).total_steps
            s.expire_all()
            if steps and total and max(steps) < total and act():
                acted = time.monotonic()
            time.sleep(0.1)
    assert acted is not None, "no checkpoint came before the end of training"
    return first, results, acted


# A sharded model is evaluated by every rank in lockstep: generation (rouge) included. A full fine-tune too: its
# base is measured by every rank, before the first step.
FSDP_BODY = {**BODY, "evaluation": {"metrics": ["perplexity", "rouge"], "max_rows": 12, "max_new_tokens": 8}}
FSDP_FULL = {**FSDP_BODY, "adapter": {"type": "full"}, "training": {**BODY["training"], "learning_rate": 0.0005}}


@pytest.mark.parametrize(
    "body,strategy", [(BODY, "ddp"), (FSDP_BODY, "fsdp"), (FSDP_FULL, "fsdp")], ids=["ddp", "fsdp-lora", "fsdp-full"]
)
def test_a_job_on_two_ranks_trains_as_one_process_and_reports_once(task_env, body, strategy):
    from worker.tasks.training import run_attempt

    rows, val = sql_rows("train.jsonl", 48), sql_rows("test.jsonl", 12)
    straight = run_job(body, rows, val, "\nA: ", via_main=True)
    job_id = queued_job(body, rows, val, gpus=2, strategy=strategy)
    assert run_attempt(job_id) == "done", attempt_log(job_id)
    assert ranks_of(job_id) == []

    job_a, evals_a, rows_a, ckpts_a, _ = stored(straight)
    job_b, evals_b, rows_b, ckpts_b, events = stored(job_id)
    assert job_b.status == "succeeded", (job_b.error, events)
    one, two = step_losses(straight), step_losses(job_id)
    assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, 13))  # each step logged once, by rank 0
    for (_, a), (_, b) in zip(one, two):
        assert b == pytest.approx(a, rel=1e-4)
    assert job_b.trained_tokens == job_a.trained_tokens
    assert [c.step for c in ckpts_b] == [c.step for c in ckpts_a]  # checkpoints recorded once
    assert set(evals_b) == {"base", "tuned"} and len(rows_b) == len(rows_a) == 12  # evaluated once
    tuned_a, tuned_b = evals_a["tuned"].metrics["eval_loss"], evals_b["tuned"].metrics["eval_loss"]
    assert tuned_b == pytest.approx(tuned_a, rel=1e-3)
    assert sum("after the claim" in e for e in events) == 1
    assert sum(e.startswith(f"2 ranks, {strategy}") for e in events) == 1, events
    for subject in ("base", "tuned"):  # every rank generated, the main rank's outputs stored once
        a, b = evals_a[subject].metrics, evals_b[subject].metrics
        assert set(b) == set(a)
        for k in a:
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-3), (subject, k)
    assert [r.tuned_output for r in rows_b] == [r.tuned_output for r in rows_a]
    for a, b in zip(ckpts_a, ckpts_b):  # the same files one process writes, packaged the same way
        assert (a.step, a.evaluated, bool(a.adapter_name)) == (b.step, b.evaluated, bool(b.adapter_name))
    # the shipped files: what one process ships, the weights equal to float rounding
    shipped_a, shipped_b = shipped_weights(job_a), shipped_weights(job_b)
    assert shipped_b.keys() == shipped_a.keys() and shipped_a
    for k, v in shipped_a.items():
        assert torch.allclose(shipped_b[k], v, rtol=1e-3, atol=1e-5), k


def shipped_weights(job) -> dict:
    """The weights in a job's downloadable archive (its adapter, or a full fine-tune's model)."""
    from safetensors.torch import load

    from app.core.settings import get_settings

    with tarfile.open(get_settings().artifacts_dir / "jobs" / job.adapter_name) as tar:
        names = [n for n in tar.getnames() if n.endswith(".safetensors")]
        assert len(names) == 1, names
        return load(tar.extractfile(names[0]).read())


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_rank_killed_mid_training_fails_the_attempt_cleanly_and_the_retry_resumes(task_env, strategy):
    from worker.tasks.training import run_attempt

    rows, val = sql_rows("train.jsonl", 48), sql_rows("test.jsonl", 12)
    job_id = queued_job(BODY, rows, val, gpus=2, strategy=strategy)

    def kill_rank_1() -> bool:
        follower = [p for p in ranks_of(job_id) if p.environ().get("LOCAL_RANK") == "1"]
        for p in follower:
            p.kill()
        return bool(follower)

    first, results, killed = act_after_a_checkpoint(job_id, kill_rank_1)
    first.join(timeout=120)
    ended_after = time.monotonic() - killed
    assert not first.is_alive() and ranks_of(job_id) == []  # torchrun stopped the main rank too: none left waiting
    assert results == ["retrying"] and task_env == [job_id]
    job, *_, events = stored(job_id)
    assert job.status == "queued", events
    assert any(re.search(r"rank 1 of 2 was killed by signal SIGKILL", e) for e in events), events[-4:]
    print(f"\n[distributed] rank 1 killed; the attempt ended {ended_after:.1f}s later")

    assert run_attempt(job_id) == "done"  # the retry, as the resent message would run it
    job, *_, events = stored(job_id)
    assert job.status == "succeeded", (job.error, events)
    assert any(e.startswith("Resuming from the checkpoint of step") for e in events), events


def test_a_shutdown_stops_every_rank_at_a_checkpoint_and_the_next_attempt_resumes(task_env):
    """SIGTERM to every training process, as the worker's shutdown sends it (worker/tasks/runtime.py): the ranks
    stop at the same checkpoint, the attempt is an interruption (not a counted failure), and the job resumes."""
    import signal

    from worker.tasks.training import run_attempt

    rows, val = sql_rows("train.jsonl", 48), sql_rows("test.jsonl", 12)
    job_id = queued_job(BODY, rows, val, gpus=2)

    def stop_every_process() -> bool:
        for proc in ranks_of(job_id):
            proc.send_signal(signal.SIGTERM)
        return True

    first, results, _ = act_after_a_checkpoint(job_id, stop_every_process)
    first.join(timeout=180)
    assert not first.is_alive() and ranks_of(job_id) == []
    job, *_, events = stored(job_id)
    assert results == ["interrupted"], events[-5:]
    assert job.status == "queued" and task_env == [job_id]
    assert run_attempt(job_id) == "done"
    job, *_, events = stored(job_id)
    assert job.status == "succeeded", (job.error, events)
    assert any(e.startswith("Resuming from the checkpoint of step") for e in events), events

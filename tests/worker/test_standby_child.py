"""A standby child (worker/tasks/standby.py, worker/child/standby.py): started ahead of its task with its libraries
imported, it becomes the task's training child: the same process trains the job, writes to the attempt's log and
says in its command line which job it trains, so that a shutdown, the reconciler and a cancel find it. A standby that
is not what a fresh child would be (another environment) is let go, and one whose worker goes away exits."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from tests.helpers.child import queued_job, sql_rows, stored

BODY = {
    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
    "adapter": {"type": "lora", "r": 8, "alpha": 16, "target_modules": "all-linear"},
    "training": {"learning_rate": 0.005, "micro_batch_size": 4, "logging_steps": 1},
    "evaluation": {"metrics": ["perplexity"], "max_rows": 8},
}


@pytest.fixture
def standby():
    """Start this test process's standby, as a worker's pool process does, from the test itself (pytest changes the
    environment between a test's set-up and its call); whatever is left of it is stopped after."""
    from worker.tasks import standby as module

    started = []

    def start():
        log = module.standby_log()
        log_from = log.stat().st_size if log.is_file() else 0  # a reused pid must not match an old line
        module.keep_standby()
        module._held.log_from = log_from
        started.append(module._held)
        return module._held

    yield start
    module._held = None
    for held in started:
        if held.proc.poll() is None:
            held.proc.kill()
            held.proc.wait()


def ready(held, timeout_s: float = 120) -> None:
    """Wait until the standby has imported everything and waits for its order."""
    from worker.tasks.standby import standby_log

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready_line_in_log(held):
            return
        assert held.proc.poll() is None, standby_log().read_text()[-2000:]
        time.sleep(0.2)
    raise AssertionError("the standby never became ready")


def test_the_standby_becomes_the_job_s_training_child(task_env, standby):
    from app.core.storage import JobFiles
    from worker.tasks.supervise import training_children
    from worker.tasks.training import run_attempt

    standby = standby()
    ready(standby)
    job_id = queued_job(BODY, sql_rows("train.jsonl", 24), sql_rows("test.jsonl", 8))
    seen: list[list[str]] = []
    ended = threading.Event()

    def watch() -> None:  # the training child, as the worker's shutdown and the reconciler find it
        while not seen and not ended.is_set():
            seen.extend(p.cmdline() for p in training_children(psutil.Process()) if p.pid == standby.proc.pid)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert run_attempt(job_id) == "done"
    finally:
        ended.set()
        watcher.join(timeout=10)
    job, evals, _rows, _ckpts, events = stored(job_id)
    assert job.status == "succeeded", (job.error, events)
    assert standby.proc.returncode == 0  # the standby was the child: it trained and exited
    assert seen and " ".join(seen[0]).split()[-3:] == ["train", job_id, "1"], seen
    log_text = JobFiles(job_id).attempt_log(1).read_text()
    assert f"job {job_id} attempt 1: training child started" in log_text  # its output went to the attempt's log
    first_step = next(e for e in events if "after the claim" in e)
    assert set(evals) == {"base", "tuned"}, first_step


def test_a_standby_of_another_environment_is_let_go(task_env, standby, monkeypatch, tmp_path):
    from app.core.logs import child_env
    from worker.tasks.standby import take_standby

    standby = standby()
    monkeypatch.setenv("FTAAS_LOG_FORMAT", "json")  # a setting the standby did not start with
    env = {**os.environ, **child_env()}
    assert take_standby(["train", "ftjob-none", "1"], tmp_path / "attempt-1.log", env) is None
    assert standby.proc.poll() is not None  # stopped, not left waiting
    assert take_standby(["train", "ftjob-none", "1"], tmp_path / "attempt-1.log", env) is None  # and not kept


def test_a_standby_exits_when_its_worker_goes_away(task_env, standby):
    standby = standby()
    ready(standby)
    standby.proc.stdin.close()  # what the pool process's exit does to its end of the pipe
    assert standby.proc.wait(timeout=30) == 0


def test_a_standby_taken_while_it_imports_is_the_job_s_child_at_once(task_env, standby, tmp_path):
    """A job queued behind another gets a standby still importing: at once its command line names the job (the
    worker's shutdown and the reconciler find it) and its output goes to the attempt's log; a shutdown then stops it
    as an interrupted attempt, which the task queues again, not as a crash."""
    from app.core.logs import child_env
    from worker.child.job_context import EXIT_INTERRUPTED
    from worker.tasks.standby import take_standby
    from worker.tasks.supervise import is_training_child

    standby = standby()
    log_path = tmp_path / "attempt-1.log"
    child = take_standby(["train", "ftjob-queued", "1"], log_path, {**os.environ, **child_env()})
    assert child is standby.proc
    deadline = time.monotonic() + 10
    while not is_training_child(psutil.Process(child.pid).cmdline(), "ftjob-queued"):
        assert time.monotonic() < deadline, psutil.Process(child.pid).cmdline()
        time.sleep(0.05)
    assert not ready_line_in_log(standby)  # still importing: the order did not wait for the imports
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=30) == EXIT_INTERRUPTED
    assert log_path.is_file()  # its output went to the attempt's log from the order on


def ready_line_in_log(held) -> bool:
    from worker.tasks.standby import standby_log

    return f"standby {held.proc.pid}: ready" in standby_log().read_text()[held.log_from :]


def test_a_waiting_standby_dies_with_its_pool_process(task_env):
    """A pool process killed outright (kill -9) leaves no standby importing on as an orphan."""
    import subprocess
    import sys

    keeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time, worker.tasks.standby as m; m.keep_standby(); "
            "print(m._held.proc.pid, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    standby_pid = int(keeper.stdout.readline())
    keeper.kill()
    keeper.wait()
    deadline = time.monotonic() + 15
    while True:
        try:
            if psutil.Process(standby_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() < deadline, "the standby outlived its pool process"
        time.sleep(0.1)


def test_the_preview_worker_keeps_no_standby():
    from app.cli import preview_worker_env

    assert preview_worker_env()["FTAAS_STANDBY_CHILD"] == "false"

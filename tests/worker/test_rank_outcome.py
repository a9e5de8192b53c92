"""How the training task reads an attempt on several GPUs (worker/tasks/training.py ranks_outcome): torchrun answers
1 for any failure, so each rank leaves its own exit code, and the task tells done, interrupted and crashed apart.
And which processes are training children (a plain child, a torchrun rank, the torchrun itself)."""

from __future__ import annotations

import pytest

from worker.child.job_context import EXIT_CRASH, EXIT_DONE, EXIT_INTERRUPTED

STOP, DONE = EXIT_INTERRUPTED, EXIT_DONE


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ([DONE, DONE], (DONE, None)),  # the main rank wrote the job's end
        ([DONE, None], (DONE, None)),  # a user error or a lost job: the main rank ended it, torchrun stopped the others
        ([STOP, STOP], (STOP, None)),  # a worker's shutdown or a pause: every rank stopped at the checkpoint
        ([STOP, DONE], (STOP, None)),  # interrupted after the last step: the other rank had finished its training
        ([STOP, None], (EXIT_CRASH, (1, "ended without an exit code (killed)"))),
        ([1, None], (EXIT_CRASH, (1, "ended without an exit code (killed)"))),  # the killed rank is the cause
        ([1, DONE], (EXIT_CRASH, (0, "exited with code 1"))),
        ([STOP, 1, STOP], (EXIT_CRASH, (1, "exited with code 1"))),
        ([None, DONE], (EXIT_CRASH, (0, "ended without an exit code (killed)"))),
        ([None, None], (EXIT_CRASH, (0, "ended without an exit code (killed)"))),  # torchrun itself killed
    ],
)
def test_the_attempt_outcome_from_what_each_rank_left(tmp_path, codes, expected):
    from app.core.storage import JobFiles
    from worker.tasks.training import ranks_outcome

    files = JobFiles("ftjob-x")
    object.__setattr__(files, "jobs_dir", tmp_path)  # a frozen dataclass
    files.root.mkdir(parents=True)
    for rank, code in enumerate(codes):
        if code is not None:
            files.rank_exit(3, rank).write_text(str(code))
    files.rank_exit(3, len(codes) - 1).with_name("attempt-2.rank-0.exit").write_text("0")  # another attempt's
    assert ranks_outcome(files, 3, len(codes)) == expected


def test_training_children_are_found_under_torchrun_too():
    from worker.tasks.supervise import is_training_child

    plain = ["/usr/bin/python3", "-m", "worker.child", "train", "ftjob-a", "1"]
    rank = ["/usr/bin/python3", "-u", "-m", "worker.child", "train", "ftjob-a", "1"]
    torchrun = ["/usr/bin/python3", "-m", "torch.distributed.run", "--nproc-per-node=2", "-m", "worker.child"]
    torchrun += ["train", "ftjob-a", "1"]
    for cmd in (plain, rank, torchrun):
        assert is_training_child(cmd) and is_training_child(cmd, "ftjob-a") and not is_training_child(cmd, "ftjob-b")
    assert not is_training_child(["/usr/bin/python3", "-m", "worker.child", "compare", "cmp-a"])
    assert not is_training_child(["/usr/bin/python3", "-m", "celery", "-A", "worker.tasks", "worker"])
    assert not is_training_child([])
    # a standby that became a training child renamed itself (setproctitle): one string, padded with empty ones
    renamed = ["/usr/bin/python3 -m worker.child train ftjob-a 1", "", ""]
    assert is_training_child(renamed, "ftjob-a") and not is_training_child(renamed, "ftjob-b")
    assert not is_training_child(["/usr/bin/python3 -m worker.child standby"])


REPORT = """[W1206 07:58:41] Sending process 2002 closing signal SIGTERM
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
worker.child FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-12-06_07:58:42
  host      : vm
  rank      : 0 (local_rank: 0)
  exitcode  : 1 (pid: 2001)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_07:58:41
  host      : vm
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 2002)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 2002
============================================================
"""


def test_the_rank_torchrun_saw_fail_first_is_the_one_named(tmp_path):
    """The main rank crashed at its next collective (code 1) after rank 1 was killed: torchrun's report names
    rank 1, whatever the files say."""
    from app.core.storage import JobFiles
    from worker.tasks.training import first_failure, ranks_outcome

    assert first_failure(REPORT) == (1, "was killed by signal SIGKILL")
    assert first_failure(REPORT.replace("-9 (pid: 2002)", "3 (pid: 2002)")) == (1, "exited with code 3")
    assert first_failure("no report here") is None
    files = JobFiles("ftjob-y")
    object.__setattr__(files, "jobs_dir", tmp_path)
    files.root.mkdir(parents=True)
    files.rank_exit(1, 0).write_text("1")
    assert ranks_outcome(files, 1, 2, REPORT) == (EXIT_CRASH, (1, "was killed by signal SIGKILL"))
    assert ranks_outcome(files, 1, 2, "") == (EXIT_CRASH, (1, "ended without an exit code (killed)"))
    files.rank_exit(1, 0).write_text(str(DONE))
    assert ranks_outcome(files, 1, 2, REPORT) == (DONE, None)  # the main rank ended the job: that stands

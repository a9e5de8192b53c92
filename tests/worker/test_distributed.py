"""One job's training over two processes, launched by PyTorch's own torchrun with the gloo backend on the CPU: the
same loss trajectory as one process with the same global batch, replicas that stay equal, and the main rank's
decisions (the best checkpoint) taken once for all (worker/training/distributed.py); the same with the model sharded
over the two (FSDP2, worker/training/sharding.py), whose checkpoints resume on any number of processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "helpers" / "ddp_train.py"


def torchrun(
    out: Path, nproc: int, accum: int, stop_at: int | None = None, strategy: str = "ddp", adapter: str = "lora"
) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd += ["--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "127.0.0.1:0"] if nproc > 1 else []
    args = [str(SCRIPT), str(out), "--accum", str(accum), "--strategy", strategy, "--adapter", adapter]
    args += ["--stop-at", str(stop_at)] if stop_at else []
    run = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600)
    if stop_at:  # interrupted: every rank stopped after the checkpoint, none hung
        assert run.returncode != 0 and "exitcode  : 3" in run.stderr, run.stderr[-5000:]
        return []
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(nproc)]


@pytest.mark.parametrize("accum", [4, 3])  # 3: a step's micro-batches do not divide evenly between the ranks
def test_two_ranks_train_as_one_process_with_the_same_global_batch(tmp_path, accum):
    (one,) = torchrun(tmp_path / "one", 1, accum)
    ranks = torchrun(tmp_path / "two", 2, accum)
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # every rank stepped the same summed gradients
    assert ranks[1]["steps"] == []  # only the main rank reports
    steps, ref = ranks[0]["steps"], one["steps"]
    assert [s["step"] for s in steps] == [s["step"] for s in ref] and len(ref) == 12 // accum * 2
    for s, r in zip(steps, ref):
        assert s["trained_tokens"] == r["trained_tokens"]  # each rank's tokens summed, exactly
        assert s["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4, abs=1e-6)
        assert s["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-3, abs=1e-6)
        assert s["learning_rate"] == pytest.approx(r["learning_rate"], rel=1e-9)
    # evaluated once per epoch end by the main rank; its choice of the best is every rank's
    assert ranks[0]["summary"] == ranks[1]["summary"] == one["summary"]


def test_a_checkpoint_of_two_ranks_resumes_in_one_process(tmp_path):
    """Interrupted at step 3 of 8 on two ranks, resumed by one process from the main rank's checkpoint: the same
    remaining steps, losses and decisions as one process that was never interrupted."""
    (one,) = torchrun(tmp_path / "one", 1, 3)
    torchrun(tmp_path / "resumed", 2, 3, stop_at=3)
    assert sorted(p.name for p in (tmp_path / "resumed" / "ckpt").iterdir()) == ["step-3"]
    (resumed,) = torchrun(tmp_path / "resumed", 1, 3)
    assert [s["step"] for s in resumed["steps"]] == [4, 5, 6, 7, 8]
    for s, r in zip(resumed["steps"], one["steps"][3:]):
        assert s["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4, abs=1e-6)
        assert s["trained_tokens"] == r["trained_tokens"]
    # (the weights agree to float rounding only: two ranks summed step 1-3's gradients in another order)
    assert resumed["summary"] == one["summary"]


def assert_same_steps(steps: list[dict], ref: list[dict]) -> None:
    assert [s["step"] for s in steps] == [s["step"] for s in ref]
    for s, r in zip(steps, ref):
        assert s["trained_tokens"] == r["trained_tokens"]
        assert s["train_loss"] == pytest.approx(r["train_loss"], rel=1e-4, abs=1e-6)
        assert s["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-3, abs=1e-6)


@pytest.mark.parametrize("adapter", ["lora", "full"])
def test_a_model_sharded_over_two_ranks_trains_as_one_process(tmp_path, adapter):
    """FSDP2 over two ranks (accum 3: one rank runs a micro-batch at weight zero every step, to match the other's
    collectives), evaluated by both in lockstep with a real generation of different lengths at each epoch end: the
    same steps as one process, the gathered weights equal on both ranks."""
    (one,) = torchrun(tmp_path / "one", 1, 3, adapter=adapter)
    ranks = torchrun(tmp_path / "two", 2, 3, strategy="fsdp", adapter=adapter)
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[1]["steps"] == []  # only the main rank reports
    assert_same_steps(ranks[0]["steps"], one["steps"])
    assert ranks[0]["summary"] == ranks[1]["summary"] == one["summary"]
    # the checkpoints are the files one process writes
    for name in ("adapter_model.safetensors" if adapter == "lora" else "model.safetensors", "trainer_state.pt"):
        assert (tmp_path / "two" / "ckpt" / "step-8" / name).is_file()


def test_sharded_checkpoints_resume_on_any_number_of_ranks(tmp_path):
    """Interrupted on two sharded ranks, resumed by one process; interrupted in one process, resumed sharded over
    two: both go on exactly as one process that was never interrupted."""
    (one,) = torchrun(tmp_path / "one", 1, 3)
    torchrun(tmp_path / "a", 2, 3, stop_at=3, strategy="fsdp")
    (resumed,) = torchrun(tmp_path / "a", 1, 3)
    torchrun(tmp_path / "b", 1, 3, stop_at=3)
    resharded = torchrun(tmp_path / "b", 2, 3, strategy="fsdp")
    for run in (resumed, resharded[0]):
        assert_same_steps(run["steps"], one["steps"][3:])
        assert run["summary"] == one["summary"]

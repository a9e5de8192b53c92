"""Checkpoints on disk: atomic to write (a temp folder renamed), resumable (weights, optimizer, scheduler, RNG
and the loop's state), and read back as data only. A checkpoint is a folder `step-<n>` under the job's
checkpoints folder (app.core.storage.JobFiles.checkpoints)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from worker.training.modeling import is_peft

COMPLETE_MARKER = "COMPLETE"


ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's own file name, as in a saved adapter

FULL_WEIGHTS = "model.safetensors"  # full fine-tuning: every weight of the plain model

EVALUATED_MARKER = "EVALUATED"  # evaluated on the held-out rows: its weights stay on disk for download

TRAINER_STATE = "trainer_state.pt"


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[1])


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest checkpoint a run can resume from: complete, and still holding its trainer state."""
    done = [p for p in ckpt_root.glob("step-*") if (p / COMPLETE_MARKER).is_file() and (p / TRAINER_STATE).is_file()]
    return max(done, key=checkpoint_step, default=None)


def weights_file(folder: Path) -> Path | None:
    """The trainable weights a checkpoint holds (adapter or full model), None if there are none."""
    return next((folder / n for n in (ADAPTER_WEIGHTS, FULL_WEIGHTS) if (folder / n).is_file()), None)


def save_trainable_weights(model, folder: Path) -> None:
    from safetensors.torch import save_file, save_model

    if is_peft(model):
        from peft import get_peft_model_state_dict

        weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
        save_file(weights, str(folder / ADAPTER_WEIGHTS))
    else:
        # save_model, not save_file: it writes shared tensors (tied input/output embeddings) once.
        save_model(model, str(folder / FULL_WEIGHTS))


def load_trainable_weights(folder: Path, model) -> None:
    """Put a checkpoint's trainable weights (saved by save_trainable_weights) back into the model."""
    from safetensors.torch import load_file, load_model

    if is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_WEIGHTS)))
    else:
        load_model(model, str(folder / FULL_WEIGHTS), device=str(next(model.parameters()).device))


def save_checkpoint(
    ckpt_root: Path, model, optimizer, scheduler, state: dict, keep: int = 2, evaluated: bool = False
) -> Path:
    """Write to a temp dir, then rename: a crash mid-write never leaves a checkpoint that looks complete.

    `state` holds step, trained_tokens, the best checkpoint so far and the other loop figures a resumed
    run needs. The newest `keep` checkpoints stay whole. Older evaluated ones (and the best) keep their
    weights, so each evaluated step can be packaged for download, and lose their optimizer and trainer
    state (for a full fine-tune, twice the weights' size); older unevaluated ones are deleted.
    """
    step = state["step"]
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".tmp-step-{step}-{os.getpid()}"
    for stale in ckpt_root.glob(".tmp-step-*"):  # half-written by an attempt that was killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_trainable_weights(model, tmp)
    torch.save(
        {
            **state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            # this process's GPU only: a job resumes on a worker of fewer GPUs, and a rank uses its own one
            "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        },
        tmp / TRAINER_STATE,
    )
    if evaluated:
        (tmp / EVALUATED_MARKER).write_text(str(step))
    (tmp / COMPLETE_MARKER).write_text(str(step))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    best = (state.get("best") or {}).get("step")
    older = sorted((p for p in ckpt_root.glob("step-*") if p != final), key=checkpoint_step)
    for old in older[: max(0, len(older) - (keep - 1))]:
        if (old / EVALUATED_MARKER).is_file() or old.name == f"step-{best}":
            (old / TRAINER_STATE).unlink(missing_ok=True)
        else:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and RNG; returns the saved state (step, trained_tokens, best...)."""
    load_trainable_weights(path, model)
    # Our own file, but read as data only: tensors, numbers, strings and containers (the optimizer's and
    # scheduler's state are just that), so a tampered checkpoint cannot run code when unpickled.
    saved = torch.load(path / TRAINER_STATE, weights_only=True)
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    torch.set_rng_state(saved.pop("rng_cpu"))
    rng_cuda = saved.pop("rng_cuda", None)
    if isinstance(rng_cuda, list):  # checkpoints before: one state per visible GPU, the first being the one used
        rng_cuda = rng_cuda[0] if rng_cuda else None
    if rng_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng_cuda)
    return saved

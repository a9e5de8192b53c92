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


def save_trainable_weights(model, folder: Path | None) -> None:
    """The trainable weights (the adapter, or every weight of a full fine-tune) as `folder`'s safetensors file.

    A sharded model (worker/training/sharding.py): every rank calls this, each tensor is gathered whole, and only the
    main rank writes (its `folder`; the others pass None). The file is the one an unsharded model writes."""
    from safetensors.torch import save_file, save_model

    from worker.training.sharding import gathered, is_sharded, reshard

    main, sharded = folder is not None, is_sharded(model)
    if sharded:
        reshard(model)  # the shards are the weights (worker/training/sharding.py)
    if is_peft(model):
        from peft import get_peft_model_state_dict

        weights = get_peft_model_state_dict(model)
        if sharded:
            weights = gathered(weights, main)
        else:
            weights = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
        if main:
            save_file(weights, str(folder / ADAPTER_WEIGHTS))
    elif sharded:
        # save_model's format: a tied tensor once, under the first of its names in sorted order, the others named
        # in the metadata (which load_model reads back)
        dropped = tied_names(model)
        weights = gathered({k: v for k, v in model.state_dict().items() if k not in dropped}, main)
        if main:
            save_file(weights, str(folder / FULL_WEIGHTS), metadata={"format": "pt", **dropped})
    else:
        # save_model, not save_file: it writes shared tensors (tied input/output embeddings) once.
        save_model(model, str(folder / FULL_WEIGHTS))


def tied_names(model) -> dict[str, str]:
    """{other name: kept name} of the parameters registered under several names (a tied head and embedding), the kept
    one first in sorted order as safetensors' save_model keeps it."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    dropped = {}
    for group in names.values():
        first, *others = sorted(group)
        dropped.update({o: first for o in others})
    return dropped


def load_trainable_weights(folder: Path, model) -> None:
    """Put a checkpoint's trainable weights (saved by save_trainable_weights) back into the model. A sharded model:
    every rank reads the whole file and keeps its own shard."""
    from safetensors.torch import load_file, load_model

    from worker.training.sharding import is_sharded, reshard, shard_like

    sharded = is_sharded(model)
    if sharded:
        reshard(model)  # the shards are the weights (worker/training/sharding.py)
    if is_peft(model):
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        weights = load_file(str(folder / ADAPTER_WEIGHTS))
        if sharded:
            targets = get_peft_model_state_dict(model)
            weights = {k: shard_like(v, targets[k]) if k in targets else v for k, v in weights.items()}
        set_peft_model_state_dict(model, weights)
    elif sharded:
        weights = load_file(str(folder / FULL_WEIGHTS))
        dropped = tied_names(model)
        targets = model.state_dict()
        model.load_state_dict({k: shard_like(weights[dropped.get(k, k)], t) for k, t in targets.items()})
    else:
        load_model(model, str(folder / FULL_WEIGHTS), device=str(next(model.parameters()).device))


def optimizer_state(optimizer, sharded: bool, main: bool) -> dict | None:
    """The optimizer's state_dict, its sharded tensors gathered whole (every rank calls it; the main rank gets it)."""
    from worker.training.sharding import gathered

    saved = optimizer.state_dict()
    if not sharded:
        return saved
    state = {i: gathered(values, main) for i, values in saved["state"].items()}
    return {**saved, "state": state} if main else None


def load_optimizer_state(optimizer, saved: dict, sharded: bool) -> None:
    """A saved optimizer state_dict back into `optimizer`; on a sharded model each rank keeps its shard of it."""
    from worker.training.sharding import shard_like

    if sharded:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved["state"] = {
            i: {k: shard_like(v, params[i]) if v.dim() and v.shape == params[i].shape else v for k, v in values.items()}
            for i, values in saved["state"].items()
        }
    optimizer.load_state_dict(saved)


def save_checkpoint(
    ckpt_root: Path, model, optimizer, scheduler, state: dict, keep: int = 2, evaluated: bool = False, main: bool = True
) -> Path | None:
    """Write to a temp dir, then rename: a crash mid-write never leaves a checkpoint that looks complete.

    A sharded model: every rank calls this (the tensors are gathered whole) and only the main rank writes; the others
    get None.

    `state` holds step, trained_tokens, the best checkpoint so far and the other loop figures a resumed
    run needs. The newest `keep` checkpoints stay whole. Older evaluated ones (and the best) keep their
    weights, so each evaluated step can be packaged for download, and lose their optimizer and trainer
    state (for a full fine-tune, twice the weights' size); older unevaluated ones are deleted.
    """
    from worker.training.sharding import is_sharded

    sharded = is_sharded(model)
    if sharded and not main:
        save_trainable_weights(model, None)
        optimizer_state(optimizer, sharded, main)
        return None
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
            "optimizer": optimizer_state(optimizer, sharded, main),
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
    # Onto the host: a checkpoint of one GPU's process would otherwise come back onto that GPU on every rank that reads
    # it; the optimizer moves its state to each parameter's device.
    saved = torch.load(path / TRAINER_STATE, weights_only=True, map_location="cpu")
    from worker.training.sharding import is_sharded

    load_optimizer_state(optimizer, saved.pop("optimizer"), is_sharded(model))
    scheduler.load_state_dict(saved.pop("scheduler"))
    torch.set_rng_state(saved.pop("rng_cpu"))
    rng_cuda = saved.pop("rng_cuda", None)
    if isinstance(rng_cuda, list):  # checkpoints before: one state per visible GPU, the first being the one used
        rng_cuda = rng_cuda[0] if rng_cuda else None
    if rng_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng_cuda)
    return saved

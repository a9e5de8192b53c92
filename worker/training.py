"""The training loop: one plain PyTorch loop for LoRA, QLoRA and prompt tuning (the peft model differs).

A plain loop rather than transformers.Trainer because the service needs exact control of three things
Trainer makes awkward: fenced progress writes, cancel checks between micro-batches, and checkpoints that
are atomic on disk and resumable mid-epoch.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence

from worker.data import IGNORE, Example

COMPLETE_MARKER = "COMPLETE"


class StopTraining(Exception):
    """should_stop() said so: the job was cancelled or is no longer ours."""


@dataclass
class TrainConfig:
    n_epochs: int
    micro_batch_size: int
    grad_accum: int
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    logging_steps: int
    seed: int
    checkpoint_every_s: float

    @classmethod
    def from_spec(cls, spec: dict, seed: int, checkpoint_every_s: float) -> TrainConfig:
        hp, tr = spec["hyperparameters"], spec["training"]
        micro = tr["micro_batch_size"]
        # batch_size is the examples per optimizer step; accumulate micro-batches to reach it.
        accum = max(1, math.ceil(hp["batch_size"] / micro)) * tr["gradient_accumulation_steps"]
        return cls(
            n_epochs=hp["n_epochs"],
            micro_batch_size=micro,
            grad_accum=accum,
            learning_rate=tr["learning_rate"],
            lr_scheduler=tr["lr_scheduler"],
            warmup_ratio=tr["warmup_ratio"],
            weight_decay=tr["weight_decay"],
            max_grad_norm=tr["max_grad_norm"],
            logging_steps=tr["logging_steps"],
            seed=seed,
            checkpoint_every_s=checkpoint_every_s,
        )


@dataclass
class Hooks:
    """How the loop talks to the outside; should_stop and the writers raise to stop the loop."""

    on_progress: Callable[[dict], None]
    on_log: Callable[[dict], None]
    on_checkpoint: Callable[[int, float, Path, dict], None]
    on_epoch_end: Callable[[int, int], dict]  # (epoch, step) -> validation metrics
    should_stop: Callable[[], bool]


def collate(batch: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    ids = [torch.tensor(e.input_ids) for e in batch]
    labels = [torch.tensor(e.labels) for e in batch]
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_id)
    return {
        "input_ids": input_ids.to(device),
        "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE).to(device),
        "attention_mask": pad_sequence([torch.ones(len(i), dtype=torch.long) for i in ids], batch_first=True).to(
            device
        ),
    }


def micro_batches(examples: list[Example], size: int, seed: int, epoch: int) -> list[list[Example]]:
    """The epoch's micro-batches in a seeded order, so a resumed run sees exactly the same sequence."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(examples), generator=g).tolist()
    return [[examples[i] for i in order[s : s + size]] for s in range(0, len(order), size)]


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = [p for p in ckpt_root.glob("step-*") if (p / COMPLETE_MARKER).is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(ckpt_root: Path, model, optimizer, scheduler, state: dict, keep: int = 2) -> Path:
    """Write to a temp dir, then rename: a crash mid-write never leaves a checkpoint that looks complete.

    `state` holds step, trained_tokens and the best checkpoint so far; the newest `keep` checkpoints and
    the best one stay on disk, older ones go.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    step = state["step"]
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".tmp-step-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
    save_file(weights, str(tmp / "adapter_model.safetensors"))
    torch.save(
        {
            **state,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        },
        tmp / "trainer_state.pt",
    )
    (tmp / COMPLETE_MARKER).write_text(str(step))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    best = (state.get("best") or {}).get("step")
    older = sorted((p for p in ckpt_root.glob("step-*") if p != final), key=lambda p: int(p.name.split("-")[1]))
    for old in older[: max(0, len(older) - (keep - 1))]:
        if old.name != f"step-{best}":
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_adapter_weights(path: Path, model) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore adapter, optimizer, scheduler and RNG; returns the saved state (step, trained_tokens, best)."""
    load_adapter_weights(path, model)
    # Our own file, written above: weights_only=False is needed for the optimizer's plain Python state.
    saved = torch.load(path / "trainer_state.pt", weights_only=False)
    optimizer.load_state_dict(saved.pop("optimizer"))
    scheduler.load_state_dict(saved.pop("scheduler"))
    torch.set_rng_state(saved.pop("rng_cpu"))
    rng_cuda = saved.pop("rng_cuda", None)
    if rng_cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng_cuda)
    return saved


def is_better(value: float, best: dict | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best["value"] if higher_is_better else value < best["value"]


def train(
    model,
    examples: list[Example],
    cfg: TrainConfig,
    pad_id: int,
    device: torch.device,
    ckpt_root: Path,
    hooks: Hooks,
    selection: tuple[str, bool] | None = None,
) -> dict:
    """Train, resuming from the last complete checkpoint under ckpt_root. Returns summary figures.

    `selection` = (metric, higher_is_better): the epoch-end metric that picks the best checkpoint; the
    summary names it (best_step, best_value, best_path) so the caller can ship that one.
    """
    from transformers import get_scheduler

    torch.manual_seed(cfg.seed)
    micro_per_epoch = math.ceil(len(examples) / cfg.micro_batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.n_epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    state: dict = {"step": 0, "trained_tokens": 0, "best": None}
    resume = latest_checkpoint(ckpt_root)
    if resume is not None:
        state.update(load_checkpoint(resume, model, optimizer, scheduler))
    step, trained_tokens = state["step"], state["trained_tokens"]
    start_step, t0 = step, time.monotonic()
    last_ckpt_t = time.monotonic()
    window_loss, window_n = 0.0, 0
    model.train()
    hooks.on_progress({"step": step, "total_steps": total_steps, "epoch": step / steps_per_epoch, "phase": "training"})

    for epoch in range(step // steps_per_epoch, cfg.n_epochs):
        batches = micro_batches(examples, cfg.micro_batch_size, cfg.seed, epoch)
        first_step_in_epoch = epoch * steps_per_epoch
        for local_step in range(step - first_step_in_epoch, steps_per_epoch):
            group = batches[local_step * cfg.grad_accum : (local_step + 1) * cfg.grad_accum]
            n_tokens = sum(e.num_loss_tokens for mb in group for e in mb)
            step_loss = 0.0
            for mb in group:
                if hooks.should_stop():
                    raise StopTraining
                batch = collate(mb, pad_id, device)
                out = model(**batch)
                # Token-weighted across the accumulated micro-batches, so accumulation equals a big batch.
                mb_tokens = sum(e.num_loss_tokens for e in mb)
                loss = out.loss * (mb_tokens / max(1, n_tokens))
                loss.backward()
                step_loss += loss.item()
                trained_tokens += int(batch["attention_mask"].sum())
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            window_loss += step_loss
            window_n += 1
            done_steps = step - start_step
            eta = (time.monotonic() - t0) / done_steps * (total_steps - step)
            hooks.on_progress(
                {
                    "step": step,
                    "total_steps": total_steps,
                    "epoch": step / steps_per_epoch,
                    "train_loss": step_loss,
                    "eta_s": eta,
                    "trained_tokens": trained_tokens,
                }
            )
            if step % cfg.logging_steps == 0 or step == total_steps:
                hooks.on_log(
                    {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 4),
                        "train_loss": window_loss / window_n,
                        "learning_rate": scheduler.get_last_lr()[0],
                        "trained_tokens": trained_tokens,
                    }
                )
                window_loss, window_n = 0.0, 0
            epoch_end = step % steps_per_epoch == 0
            if epoch_end or time.monotonic() - last_ckpt_t >= cfg.checkpoint_every_s:
                metrics = {"train_loss": step_loss}
                if epoch_end:
                    model.eval()
                    metrics.update(hooks.on_epoch_end(epoch, step))
                    model.train()
                    value = metrics.get(selection[0]) if selection else None
                    if value is not None and is_better(value, state["best"], selection[1]):
                        state["best"] = {"step": step, "value": value}
                state.update(step=step, trained_tokens=trained_tokens)
                path = save_checkpoint(ckpt_root, model, optimizer, scheduler, state)
                hooks.on_checkpoint(step, step / steps_per_epoch, path, metrics)
                last_ckpt_t = time.monotonic()
    model.eval()
    return {
        "steps": step,
        "total_steps": total_steps,
        "trained_tokens": trained_tokens,
        "seconds": time.monotonic() - t0,
        "resumed_from": start_step,
        "best_step": state["best"]["step"] if state["best"] else None,
        "best_value": state["best"]["value"] if state["best"] else None,
        "best_path": ckpt_root / f"step-{state['best']['step']}" if state["best"] else None,
    }

"""The training loop: one plain PyTorch loop for LoRA, QLoRA, prompt tuning (the peft model differs) and full
fine-tuning (the plain model, every weight trainable).

A plain loop rather than transformers.Trainer because the service needs exact control of three things
Trainer makes awkward: fenced progress writes, cancel checks between micro-batches, and checkpoints that
are atomic on disk and resumable mid-epoch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from app.core.job_spec import JobSpec
from worker.training.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint
from worker.training.data import Example
from worker.training.distributed import Ranks
from worker.training.loss import loss_fn_for
from worker.training.modeling import mixed_precision, peak_memory_bytes
from worker.training.packing import collate, collate_packed
from worker.training.sharding import full, is_sharded, reduce_gradients_after, reshard


class StopTraining(Exception):
    """should_stop() said so: the job was cancelled or is no longer ours."""


class TrainingInterrupted(Exception):
    """interrupt_requested() said so: a checkpoint of `step` was saved, then the loop stopped."""

    def __init__(self, step: int) -> None:
        super().__init__(f"checkpoint saved at step {step}")
        self.step = step


def packs(spec: JobSpec | dict) -> bool:
    """Whether a job's micro-batches are packed. Prompt tuning prepends virtual tokens to each row, which
    packed examples cannot share."""
    spec = JobSpec.of(spec)
    return spec.training.packing and spec.adapter.type != "prompt_tuning"


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
    eval_every_steps: int | None = None  # evaluate every N optimizer steps; None = at each epoch end
    early_stopping_patience: int | None = None  # stop after N evaluations in a row without a better metric
    pack_length: int | None = None  # pack each micro-batch into rows of this many tokens; None = pad instead

    @classmethod
    def from_spec(cls, spec: JobSpec | dict, seed: int, checkpoint_every_s: float) -> TrainConfig:
        """The loop's settings from a job's spec, whose batch sizes are concrete by now (auto resolved)."""
        spec = JobSpec.of(spec)
        hp, tr, ev = spec.hyperparameters, spec.training, spec.evaluation
        micro = tr.micro_batch_size
        # batch_size is the examples per optimizer step; accumulate micro-batches to reach it.
        accum = max(1, math.ceil(hp.batch_size / micro)) * tr.gradient_accumulation_steps
        return cls(
            n_epochs=hp.n_epochs,
            micro_batch_size=micro,
            grad_accum=accum,
            learning_rate=tr.learning_rate,
            lr_scheduler=tr.lr_scheduler,
            warmup_ratio=tr.warmup_ratio,
            weight_decay=tr.weight_decay,
            max_grad_norm=tr.max_grad_norm,
            logging_steps=tr.logging_steps,
            seed=seed,
            checkpoint_every_s=checkpoint_every_s,
            eval_every_steps=ev.eval_every_steps,
            early_stopping_patience=ev.early_stopping_patience,
            pack_length=tr.max_seq_length if packs(spec) else None,
        )


@dataclass
class Hooks:
    """How the loop talks to the outside; should_stop and the writers raise to stop the loop."""

    on_progress: Callable[[dict], None]
    on_log: Callable[[dict], None]
    on_checkpoint: Callable[[int, float, Path, dict, bool], None]  # (step, epoch, path, metrics, evaluated)
    on_evaluate: Callable[[int, float], dict]  # (step, epoch) -> metrics on the held-out rows
    should_stop: Callable[[], bool]
    # the worker is shutting down: save a checkpoint at the end of this step and stop (TrainingInterrupted)
    interrupt_requested: Callable[[], bool] = lambda: False


class SupervisedObjective:
    """Supervised fine-tuning: cross-entropy on the labelled tokens, padded or packed micro-batches.

    An objective gives the loop two things: each item's share of a step's loss (`weight`: here its loss tokens,
    so accumulated micro-batches equal one big batch) and a micro-batch's mean loss with its real tokens.
    Preference tuning has its own (worker/training/preference.py)."""

    def __init__(self, model, pad_id: int, device: torch.device, pack_length: int | None) -> None:
        self.loss_fn, self.pad_id, self.device, self.pack_length = loss_fn_for(model), pad_id, device, pack_length

    def weight(self, example: Example) -> int:
        return example.num_loss_tokens

    def loss(self, model, mb: list[Example]) -> tuple[torch.Tensor, int]:
        if self.pack_length:
            batch = collate_packed(mb, self.pack_length, self.pad_id, self.device)
            real_tokens = int(batch.pop("num_tokens"))
        else:
            batch = collate(mb, self.pad_id, self.device)
            real_tokens = int(batch["attention_mask"].sum())
        return self.loss_fn(model, batch), real_tokens


def micro_batches(n: int, size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's micro-batches of positions in a seeded order, so a resumed run sees exactly the same sequence.
    Positions, not examples: an example is made when its step comes (a file's tokenized rows make them on access)."""
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return [order[s : s + size] for s in range(0, len(order), size)]


ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's own file name, as in a saved adapter
FULL_WEIGHTS = "model.safetensors"  # full fine-tuning: every weight of the plain model
EVALUATED_MARKER = "EVALUATED"  # evaluated on the held-out rows: its weights stay on disk for download


def is_better(value: float, best: dict | None, higher_is_better: bool) -> bool:
    if best is None:
        return True
    return value > best["value"] if higher_is_better else value < best["value"]


@dataclass(frozen=True)
class TrainSummary:
    """What a training run did, for the job row, its events and the choice of the shipped checkpoint."""

    steps: int  # the last step trained (== total_steps unless stopped early)
    total_steps: int
    epoch: float
    trained_tokens: int  # loss tokens, every attempt included
    seconds: float  # this attempt's wall time in the loop, evaluations included
    train_seconds: float  # training time of every attempt, evaluations excluded
    peak_memory_bytes: int
    resumed_from: int  # the step this attempt resumed at (0: from the start)
    stopped_early: int | None  # the step early stopping ended training at
    bad_evals: int
    best_step: int | None  # the best evaluated checkpoint by the selection metric (None: no selection)
    best_value: float | None
    best_path: Path | None


def train(
    model,
    examples: list,
    cfg: TrainConfig,
    pad_id: int,
    device: torch.device,
    ckpt_root: Path,
    hooks: Hooks,
    selection: tuple[str, bool] | None = None,
    objective=None,
    ranks: Ranks | None = None,
) -> TrainSummary:
    """Train, resuming from the last complete checkpoint under ckpt_root.

    The model is evaluated (hooks.on_evaluate) at each epoch end, or every cfg.eval_every_steps steps, and
    always at the last step; every evaluation is a checkpoint. `selection` = (metric, higher_is_better)
    picks the best of them: the summary names it (best_step, best_value, best_path) so the caller can ship
    that one. With cfg.early_stopping_patience, training stops after that many evaluations in a row
    without a strictly better value (summary.stopped_early = the step).

    `examples` are what `objective` trains on: Examples for the default SupervisedObjective, preference pairs
    for preference tuning's.

    `ranks`: one of several processes training the job together (worker/training/distributed.py): each takes its
    share of every step's micro-batches and the gradients are summed over them; only the main rank calls the
    hooks, evaluates and saves checkpoints, and its decisions are every rank's. A model sharded over the ranks
    (worker/training/sharding.py) is evaluated and saved by every rank together, the main rank writing.
    """
    from transformers import get_scheduler

    ranks = ranks or Ranks()
    sharded = is_sharded(model)
    if sharded:  # evaluated before (a full fine-tune's base): the root's weights left gathered, as other tensors
        reshard(model)
    torch.manual_seed(cfg.seed)
    micro_per_epoch = math.ceil(len(examples) / cfg.micro_batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = steps_per_epoch * cfg.n_epochs
    params = [p for p in model.parameters() if p.requires_grad]
    objective = objective or SupervisedObjective(model, pad_id, device, cfg.pack_length)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=int(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    # Everything a resumed attempt must carry on with; saved in each checkpoint's trainer state.
    state: dict = {
        "step": 0,
        "trained_tokens": 0,
        "best": None,
        "bad_evals": 0,  # evaluations in a row without a better selection metric (early stopping)
        "stopped_early": None,  # the step training stopped early at: a resumed attempt must not go on
        "train_seconds": 0.0,  # the earlier attempts' training time, up to their last checkpoint
        "peak_memory_bytes": 0,
    }
    resume = latest_checkpoint(ckpt_root)
    if resume is not None:
        state.update(load_checkpoint(resume, model, optimizer, scheduler))
    step, trained_tokens = state["step"], state["trained_tokens"]
    start_step, t0, prior_seconds = step, time.monotonic(), state["train_seconds"]
    # train_seconds: wall time of this loop (forward, backward, optimizer, cancel checks, progress writes,
    # checkpoint saves), evaluations excluded; plus the earlier attempts' figure from the checkpoint.
    eval_seconds = 0.0
    last_ckpt_t = time.monotonic()
    window_loss, window_n = 0.0, 0
    model.train()
    if ranks.main:
        hooks.on_progress(
            {"step": step, "total_steps": total_steps, "epoch": step / steps_per_epoch, "phase": "training"}
        )

    batches, batches_epoch = [], None
    last_step = step if state["stopped_early"] is not None else total_steps
    for epoch, local_step in (divmod(s, steps_per_epoch) for s in range(step, last_step)):
        if epoch != batches_epoch:
            batches, batches_epoch = micro_batches(len(examples), cfg.micro_batch_size, cfg.seed, epoch), epoch
        group = [
            [examples[i] for i in mb] for mb in batches[local_step * cfg.grad_accum : (local_step + 1) * cfg.grad_accum]
        ]
        step_weight = sum(objective.weight(e) for mb in group for e in mb)
        step_loss, step_tokens, step_t0 = 0.0, 0, time.monotonic()
        mine = ranks.share(group)
        if sharded:  # each pass is a collective: as many on every rank, the missing ones on a micro-batch at weight 0
            mine += [None] * (math.ceil(len(group) / ranks.world) - len(mine))
        for i, mb in enumerate(mine):
            if not ranks.parallel and hooks.should_stop():
                raise StopTraining
            idle, mb = mb is None, group[0] if mb is None else mb
            if sharded:
                reduce_gradients_after(model, last=i == len(mine) - 1)
            with mixed_precision(device):
                mb_loss, real_tokens = objective.loss(model, mb)
            # Weighted by the objective's units (loss tokens, pairs) across the accumulated micro-batches (every
            # rank's), so accumulation, and the sum over ranks, equal one big batch.
            weight = 0.0 if idle else sum(objective.weight(e) for e in mb) / max(1, step_weight)
            loss = mb_loss * weight
            # FSDP averages the ranks' gradients; the sum is wanted (worker/training/sharding.py)
            (loss * ranks.world if sharded else loss).backward()
            step_loss += loss.item()
            step_tokens += 0 if idle else real_tokens
        if ranks.parallel:
            if not sharded:
                ranks.sum_gradients(params)
            step_loss, summed_tokens = ranks.sum(step_loss, step_tokens)
            step_tokens = int(summed_tokens)
            if ranks.decide(hooks.should_stop() if ranks.main else None):
                raise StopTraining
        trained_tokens += step_tokens
        grad_norm = float(full(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)))  # before clipping
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_loss += step_loss
        window_n += 1
        done_steps = step - start_step
        eta = (time.monotonic() - t0) / done_steps * (total_steps - step)
        if ranks.main:
            hooks.on_progress(
                {
                    "step": step,
                    "total_steps": total_steps,
                    "epoch": step / steps_per_epoch,
                    "train_loss": step_loss,
                    "eta_s": eta,
                    "trained_tokens": trained_tokens,
                    # this step alone, for the worker's /metrics (worker/telemetry.py): loss.item() waited for the GPU
                    "step_seconds": time.monotonic() - step_t0,
                    "step_tokens": step_tokens,
                }
            )
        if (step % cfg.logging_steps == 0 or step == total_steps) and ranks.main:
            hooks.on_log(
                {
                    "step": step,
                    "epoch": round(step / steps_per_epoch, 4),
                    "train_loss": window_loss / window_n,
                    "learning_rate": scheduler.get_last_lr()[0],
                    "trained_tokens": trained_tokens,
                    "grad_norm": grad_norm,  # the window's last step
                }
            )
            window_loss, window_n = 0.0, 0
        epoch_end = step % steps_per_epoch == 0
        evaluate = step == total_steps or (step % cfg.eval_every_steps == 0 if cfg.eval_every_steps else epoch_end)
        interrupted = hooks.interrupt_requested() and step < last_step
        due = time.monotonic() - last_ckpt_t >= cfg.checkpoint_every_s
        if ranks.parallel:  # the main rank's clock and signals decide for all
            interrupted, due = ranks.decide((interrupted, due) if ranks.main else None)
        if not (evaluate or epoch_end or interrupted or due):
            continue
        # evaluated once and saved once; the other ranks wait for the decisions that follow (a sharded model: every
        # rank takes part, the main rank alone writes)
        if ranks.main or sharded:
            metrics = {"train_loss": step_loss}
            if evaluate:
                t = time.monotonic()
                model.eval()
                metrics.update(hooks.on_evaluate(step, step / steps_per_epoch))
                model.train()
                if sharded:
                    reshard(model)
                eval_seconds += time.monotonic() - t
                _track_best(state, metrics, step, selection, cfg.early_stopping_patience, total_steps)
            state.update(
                step=step,
                trained_tokens=trained_tokens,
                train_seconds=prior_seconds + time.monotonic() - t0 - eval_seconds,
                peak_memory_bytes=max(state["peak_memory_bytes"], peak_memory_bytes(device)),
            )
            path = save_checkpoint(ckpt_root, model, optimizer, scheduler, state, evaluated=evaluate, main=ranks.main)
            if ranks.main:
                hooks.on_checkpoint(step, step / steps_per_epoch, path, metrics, evaluate)
        if ranks.parallel:
            state = ranks.decide(state if ranks.main else None)  # best so far, early stopping: the same everywhere
        last_ckpt_t = time.monotonic()
        if state["stopped_early"] is not None:
            break
        if interrupted:
            raise TrainingInterrupted(step)
    model.eval()
    best = state["best"]
    return TrainSummary(
        steps=step,
        total_steps=total_steps,
        epoch=step / steps_per_epoch,
        trained_tokens=trained_tokens,
        seconds=time.monotonic() - t0,
        train_seconds=prior_seconds + time.monotonic() - t0 - eval_seconds,
        peak_memory_bytes=max(state["peak_memory_bytes"], peak_memory_bytes(device)),
        resumed_from=start_step,
        stopped_early=state["stopped_early"],
        bad_evals=state["bad_evals"],
        best_step=best["step"] if best else None,
        best_value=best["value"] if best else None,
        best_path=ckpt_root / f"step-{best['step']}" if best else None,
    )


def _track_best(
    state: dict, metrics: dict, step: int, selection: tuple[str, bool] | None, patience: int | None, total: int
) -> None:
    """After an evaluation: update the best checkpoint and the early-stopping count in `state`."""
    if selection is None:  # "last": nothing to compare, so nothing to stop on either
        return
    value = metrics.get(selection[0])
    if value is not None and is_better(value, state["best"], selection[1]):
        state["best"], state["bad_evals"] = {"step": step, "value": value}, 0
    else:  # not strictly better (or not measured)
        state["bad_evals"] += 1
    if patience is not None and state["bad_evals"] >= patience and step < total:
        state["stopped_early"] = step

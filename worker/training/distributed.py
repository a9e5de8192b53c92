"""One job over several processes, one per GPU (started by torchrun, which sets RANK / WORLD_SIZE and the rendezvous
in the environment): data parallelism for models that fit one GPU, through torch.distributed's collectives.

Every rank holds the whole model and its own copy of the adapter (or of every weight). The training loop gives each
rank a share of every optimizer step's micro-batches (round-robin), each weighted by its share of the *whole*
step's loss tokens, exactly as one process accumulating all of them would; after the backward passes one all-reduce
sums the trainable gradients, so every rank clips and steps identically and the replicas stay equal. The loss is
the one a single process with the same global batch computes, up to the order of a float sum.

Why a sum of gradients by all_reduce rather than torch's DistributedDataParallel wrapper: the fused loss path
(worker/training/loss.py) calls the decoder and the output head directly, not the wrapped model's forward, which
DistributedDataParallel needs to see to prepare its reduction; and a step's micro-batches need not divide evenly
among the ranks (the last step of an epoch), which the wrapper's per-backward reduction would deadlock on. Adapters
are megabytes, so one reduction per optimizer step, after the backward passes, costs little next to a step.

A model that does not fit one GPU is sharded over the ranks instead (worker/training/sharding.py, PyTorch's FSDP2):
the same loop, the same checkpoints, with FSDP's collectives in place of this one all-reduce.

Decisions that must be the same on every rank (stop now, save a checkpoint, the best checkpoint so far, early
stopping) are the main rank's, broadcast once per step. The main rank alone talks to the outside: progress, events,
evaluations and checkpoints; the others wait for it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in its job: rank `rank` of `world` (one process: 0 of 1)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1

    @classmethod
    def current(cls) -> Ranks:
        """The process group this process joined, or a single process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def share(self, group: list) -> list:
        """This rank's micro-batches of one optimizer step: every world-th, starting at its rank."""
        return group[self.rank :: self.world]

    def sum(self, *values: float) -> list[float]:
        """The values summed over every rank (float64, so token counts stay exact)."""
        if not self.parallel:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.tolist()

    def decide(self, value):
        """The main rank's `value` (any picklable object), on every rank."""
        if not self.parallel:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wait_for_main(self) -> None:
        """Every rank waits here until the main rank arrives (it has put the host's files in place, or evaluated).
        Polled, not a blocking call: a SIGTERM's handler (a worker's shutdown) runs meanwhile and can stop the rank.
        """
        if not self.parallel:
            return
        work = dist.barrier(async_op=True)
        while not work.is_completed():
            time.sleep(0.05)
        work.wait()

    def copy_from_main(self, params: list[torch.nn.Parameter]) -> None:
        """The main rank's values of `params` on every rank: the replicas start equal whatever each initialised."""
        if not self.parallel:
            return
        device = _collective_device()  # gloo moves CPU tensors only, NCCL CUDA ones
        with torch.no_grad():
            for p in params:
                if p.device == device:
                    dist.broadcast(p.data, src=0)
                else:  # (a model read into host memory to be sharded, or a GPU's under gloo)
                    moved = p.data.to(device)
                    dist.broadcast(moved, src=0)
                    p.data.copy_(moved)

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Replace each trainable parameter's gradient by its sum over the ranks: one all-reduce per dtype of a
        flat buffer (a rank that had no micro-batch this step contributes zeros)."""
        if not self.parallel:
            return
        by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            offset = 0
            for p in group:
                n = p.numel()
                p.grad = flat[offset : offset + n].view_as(p).clone()
                offset += n


def _collective_device() -> torch.device:
    """Where the small control tensors live: NCCL reduces CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def join_from_environment(backend: str | None = None, timeout_s: float | None = None) -> Ranks:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE, MASTER_ADDR/PORT); a single
    process when it describes none. NCCL on GPUs (each rank on the GPU of its LOCAL_RANK), gloo on CPUs.

    timeout_s: how long a collective waits for the other ranks (torch's default is 10 minutes for NCCL, 30 for
    gloo). The main rank evaluates and saves alone while the others wait at their next collective."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s) if timeout_s else None)
    return Ranks.current()


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

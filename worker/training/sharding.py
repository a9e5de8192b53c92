"""One job's model sharded over its ranks with PyTorch's FSDP2 (torch.distributed.fsdp.fully_shard), for models that
do not fit one GPU: each rank keeps 1/world of every weight, gradient and optimizer state, and a decoder layer's
weights are gathered just before it runs and freed just after (again for its backward).

Units: every decoder layer, then the causal LM itself (the root: embedding, final norm, head; a tied head is one
parameter with the embedding and stays in one unit). The root is the transformers model, not peft's wrapper:
peft's forward and transformers' generate both go through it, so its weights are gathered whichever is called.

What the rest of the training path does differently on a sharded model (worker/training/loop.py and checkpoints.py):
- every rank runs the same number of forward and backward passes (each is a collective): a rank with no micro-batch
  left in a step runs one of the step's at weight zero;
- FSDP averages the gradients over the ranks where the loop sums them: each rank's loss is scaled by the world size
  (`set_gradient_divide_factor(1.0)` would do it in the reduction, but needs PREMUL_SUM, which gloo lacks);
- an adapter's gradients are reduced once per optimizer step, after its last micro-batch, not after every one (a full
  fine-tune's after every one: see reduce_gradients_after);
- the loss is the model's own (worker/training/loss.py: the fused head reads its weight outside the root's forward,
  where FSDP keeps it sharded);
- checkpoints hold the full tensors, gathered from every rank and written by the main one, in exactly the files one
  process writes: a job resumes on any number of ranks, and packaging reads them as it always did;
- evaluation runs on every rank in lockstep, on the same rows (generation with `synced_gpus`); the main rank writes.

No mixed-precision policy: the weights are gathered in the dtypes they are stored in (a bf16 base, fp32 adapters or a
fp32 full fine-tune) and autocast runs the matmuls in bf16 as on one GPU, so a sharded step computes what an
unsharded one does. A bf16 all-gather of a full fine-tune's fp32 weights would halve its traffic, at a cost in
exactness: not done.
"""

from __future__ import annotations

import torch

from worker.training.distributed import Ranks


def shard(model, ranks: Ranks, device: torch.device) -> None:
    """Shard `model` (a peft model or a plain causal LM) in place over every rank of `ranks`, onto `device`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from worker.training.modeling import is_peft

    base = model.get_base_model() if is_peft(model) else model
    mesh = init_device_mesh(device.type, (ranks.world,))
    for layer in decoder_layers(base):
        fully_shard(layer, mesh=mesh)
    fully_shard(base, mesh=mesh)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers causal LM (model.model.layers for Llama, Mistral, Qwen, Gemma...)."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__}: no decoder layers found to shard (model.get_decoder().layers)")
    return list(layers)


def root_of(model):
    """The module FSDP sharded at the root, or None when `model` is not sharded."""
    from torch.distributed.fsdp import FSDPModule

    from worker.training.modeling import is_peft

    base = model.get_base_model() if is_peft(model) else model
    return base if isinstance(base, FSDPModule) else None


def is_sharded(model) -> bool:
    return root_of(model) is not None


def reshard(model) -> None:
    """Free every gathered weight. Needed after inference (evaluation, generation): the root keeps its weights gathered
    after a forward, for the backward that inference never runs, and meanwhile its parameters are the gathered
    tensors, not the shards. An optimizer built then held the wrong tensors (measured: a full fine-tune whose base
    was evaluated before the first step trained differently from one process; equal with this)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def reduce_gradients_after(model, last: bool) -> None:
    """Whether this backward pass reduces the gradients or only accumulates them. An adapter's are reduced once, after
    the step's last micro-batch: they are small, and each reduction is a collective per layer. A full fine-tune's are
    reduced after every one: accumulating them unreduced keeps every weight's whole gradient on every rank, the memory
    sharding is for."""
    from worker.training.modeling import is_peft

    root_of(model).set_requires_gradient_sync(last or not is_peft(model))


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank calls it, in the same order); others as they are."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def gathered(tensors: dict[str, torch.Tensor], main: bool) -> dict[str, torch.Tensor]:
    """`tensors` whole, on the CPU, on the main rank (the others get {}): gathered one at a time, so a rank's
    device holds one extra whole tensor at most."""
    out = {}
    for name, t in tensors.items():
        whole = full(t.detach())
        if main:
            out[name] = whole.to("cpu", copy=True).contiguous()
        del whole
    return out


def shard_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole tensor (read by every rank from the same file) as this rank's shard of `param`: sliced locally, no
    communication."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor):
        return value
    value = value.to(device=param.device, dtype=param.dtype)
    return distribute_tensor(value, param.device_mesh, param.placements, src_data_rank=None)

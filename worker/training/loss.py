"""The training loss of a causal LM, computed on the completion tokens only.

A model's own forward runs the output head (128k-vocabulary on Llama 3: a quarter of the 1B model's FLOPs)
on every position and then masks most of them out of the loss; with prompt/completion data about half the
positions are prompt. Here the decoder runs as usual, the hidden states of the positions that have a label
are gathered, and only they go through the head and the cross-entropy: the same loss, the head's work in
proportion to the trained tokens.

On a GPU with Liger Kernel the head and the cross-entropy are one fused, chunked kernel
(LigerFusedLinearCrossEntropyLoss), so the [tokens, vocabulary] logits never exist in memory. Unlike Liger's
patched model forward, which reads lm_head.weight, this reads the head's *effective* weight: with a trained
EOS row (peft trainable tokens on a tied head) that is the base matrix with the trained row in place, so the
row gets its gradient through the fused loss too.

Gemma 2's final logit soft-capping (logits = cap * tanh(logits / cap), cap 30) is applied here too, inside the
fused kernel (Liger's `softcap`) or on the gathered logits: with its 256k vocabulary the model's own forward would
materialize [tokens, 256k] logits in fp32, the largest buffer of a step.

Anything this does not know how to split (a LoRA on the head itself, a head bias, logit scaling, prompt tuning's
virtual tokens, a model sharded with FSDP) takes the model's own forward instead: `loss_fn_for` says which.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from worker.training.data import IGNORE
from worker.training.kernels.varlen_attention import NAME as VARLEN
from worker.training.kernels.varlen_attention import attention_implementation, boundaries
from worker.training.kernels.varlen_attention import available as varlen_available
from worker.training.kernels.varlen_attention import register as register_varlen

log = logging.getLogger("ftaas.loss")

# Causal LMs whose forward is exactly `lm_head(decoder(...).last_hidden_state)` then the shifted cross-entropy, with
# at most a final logit soft-capping (`final_logit_softcapping`, Gemma 2's, repeated here): no scaling or bias.
PLAIN_HEAD_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo2", "granite"}
)

LossFn = Callable[[torch.nn.Module, dict], torch.Tensor]


def model_loss(model, batch: dict) -> torch.Tensor:
    """The model's own forward and loss (mean over the labelled tokens)."""
    return model(**batch).loss


def split_model(model):
    """(decoder, head) of a causal LM, through peft's wrappers; None where the split is not known to be exact."""
    from worker.training.modeling import is_peft
    from worker.training.sharding import is_sharded

    if is_sharded(model):  # the head's weight, read outside the root's forward, is only this rank's shard there
        return None
    if is_peft(model):
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None  # the virtual tokens are prepended inside peft's forward
        model = model.get_base_model()
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    if getattr(config, "logit_scale", None):
        return None
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or head is None or head_weight(head) is None:
        return None
    return decoder, head


def logit_softcap(model) -> float | None:
    """The model's final logit soft-capping (Gemma 2: 30.0), None where it has none."""
    from worker.training.modeling import is_peft

    base = model.get_base_model() if is_peft(model) else model
    return getattr(getattr(base, "config", None), "final_logit_softcapping", None) or None


def head_weight(head) -> torch.Tensor | None:
    """The output head's effective [vocabulary, hidden] weight, or None for a head this cannot read."""
    token_adapter = getattr(head, "token_adapter", None)  # peft's TrainableTokensWrapper (trained EOS row)
    if token_adapter is not None:
        base = token_adapter.base_layer
        if type(base) is not torch.nn.Linear or base.bias is not None or token_adapter.merged:
            return None
        if token_adapter.disable_adapters or not token_adapter.active_adapters:
            return base.weight
        # The base matrix with the trained rows copied in: autograd carries their gradient back to the rows.
        return token_adapter.get_merged_weights(token_adapter.active_adapters)
    if type(head) is torch.nn.Linear and head.bias is None:
        return head.weight
    return None  # a LoRA or 4-bit layer on the head itself


# Liger's default chunk bounds the transient logits to tokens x hidden elements: about 128 tokens per chunk
# with Llama 3's vocabulary, and where the head has a gradient (a trained EOS row) every chunk then adds a
# K=128 product into the whole [vocabulary, hidden] gradient, reading and writing it ~40 times a step (29 ms
# of 176 on an H200). 16x the budget means chunks of ~2,048 tokens and about 1 GB of transient logits.
CHUNK_MEM_CONST = 16


def _fused_ce():
    """Liger's fused linear + cross-entropy, by its functional API (keyword arguments: its positional layout has
    changed between releases), or None without Liger."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        return None
    return liger_fused_linear_cross_entropy


def varlen_exact(config, width: int) -> bool:
    """Whether the plain causal varlen kernel computes this model's attention exactly over rows of `width` tokens:
    not with attention-logit soft-capping (Gemma 2), nor with a sliding window narrower than a row."""
    if getattr(config, "attn_logit_softcapping", None):
        return False
    window = getattr(config, "sliding_window", None)
    return not (window and getattr(config, "use_sliding_window", True) is not False and window < width)


def _packed_on_gpu(batch: dict, config) -> bool:
    """A packed batch (position ids, no attention mask) on a GPU that has varlen attention, the setting, and a model
    whose attention the varlen kernel computes exactly."""
    if "attention_mask" in batch or "position_ids" not in batch:
        return False
    from worker.training.modeling import fused_kernels_enabled

    if not (varlen_available(batch["input_ids"].device) and fused_kernels_enabled()):
        return False
    if not varlen_exact(config, batch["position_ids"].shape[-1]):
        return False
    register_varlen()
    return True


def decoder_hidden(decoder, batch: dict) -> torch.Tensor:
    """The decoder's last hidden states for a padded or packed batch (its labels and owners are not inputs)."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "owner")}
    # Not under gradient checkpointing: its recomputation in backward runs outside this forward's switch of
    # attention implementation, so it would recompute a different graph.
    if _packed_on_gpu(batch, decoder.config) and not getattr(decoder, "gradient_checkpointing", False):
        # Packed rows as variable-length sequences: no block-diagonal mask (kernels/varlen_attention.py).
        with attention_implementation(decoder.config, VARLEN):
            return decoder(**inputs, use_cache=False, **boundaries(batch["position_ids"])).last_hidden_state
    return decoder(**inputs, use_cache=False).last_hidden_state


def completion_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over the labelled next tokens, the head run on those positions only."""
    decoder, head = split_model(model)
    hidden = decoder_hidden(decoder, batch)
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    h = hidden[:, :-1][keep]  # [trained tokens, hidden]
    target = labels[keep]
    if target.numel() == 0:  # nothing to learn in this micro-batch: a zero that still reaches the graph
        return hidden.sum() * 0.0
    weight = head_weight(head)
    softcap = logit_softcap(model)
    fused = _fused_ce() if h.is_cuda else None
    if fused is not None:
        # The head's gradient (a trained EOS row) accumulates in the weight's dtype (accum_dtype None) over the few
        # ~2k-token chunks: an fp32 [vocabulary, hidden] buffer would add 1 GiB for one row's gradient.
        return fused(
            h.to(weight.dtype),
            weight,
            target,
            ignore_index=IGNORE,
            reduction="mean",
            accum_dtype=None,
            chunk_mem_const=CHUNK_MEM_CONST,
            softcap=softcap,
        )
    logits = F.linear(h, weight.to(h.dtype))
    if softcap:  # as Gemma2ForCausalLM.forward does it
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits.float(), target)


def loss_fn_for(model) -> LossFn:
    """completion_loss where the model splits exactly into decoder and head, else the model's own loss."""
    if split_model(model) is None:
        log.info("loss: the model's own forward")
        return model_loss
    log.info("loss: decoder, then the head on the labelled positions only")
    return completion_loss

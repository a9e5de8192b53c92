"""Preference tuning (DPO): a pair's sequence log-probabilities, the frozen reference's, and the sigmoid loss.

DPO (Rafailov et al., 2023) trains the policy to raise the chosen answer's log-probability relative to a frozen
reference model and lower the rejected one's: loss = -log σ(β((π_c - ref_c) - (π_r - ref_r))), where π and ref
are the sums of the answer tokens' log-probabilities. This is TRL's `sigmoid` loss (DPOTrainer._compute_loss),
tested against TRL itself in tests/worker/test_preference.py.

The reference is the frozen base: the adapter disabled (peft's disable_adapter), never a second copy of the
weights. Its log-probabilities do not change during training, so they are computed once, before the first step,
as TRL's `precompute_ref_log_probs` does, and kept beside the checkpoints for a resumed attempt (for full
fine-tuning the base weights are gone once training has stepped; an attempt computes them before it loads its
checkpoint, so either way the numbers are the base's).
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worker.training.data import IGNORE, Example
from worker.training.loss import decoder_hidden, head_weight, split_model
from worker.training.modeling import is_peft, mixed_precision
from worker.training.packing import collate, collate_packed

REFERENCE_FILE = "reference_logps.pt"  # beside the step-N checkpoint folders


@dataclass
class Pair:
    """One preference row as trained: the prompt with the chosen answer and with the rejected one (only the
    answers labelled), and the reference model's log-probability of each answer."""

    chosen: Example
    rejected: Example
    ref_chosen: float = 0.0
    ref_rejected: float = 0.0

    @property
    def cut(self) -> bool:
        return self.chosen.cut or self.rejected.cut

    @property
    def tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


def dpo_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> torch.Tensor:
    """The sigmoid DPO loss of each pair (TRL's loss_type "sigmoid", no label smoothing)."""
    return -F.logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))


def sequence_logps(model, examples: list[Example], pad_id: int, device, pack_length: int | None = None) -> torch.Tensor:
    """Each example's sum of log p(token | the tokens before it) over its labelled tokens, float32, [examples].

    Where the model splits into decoder and head (worker/training/loss.py), the head runs on the labelled
    positions only, and the examples may be packed into rows of pack_length tokens (they never attend to each
    other); otherwise the model's own forward on padded rows."""
    parts = split_model(model)
    if parts is None:
        return model_forward_logps(model, examples, pad_id, device)
    decoder, head = parts
    if pack_length:
        batch = collate_packed(examples, pack_length, pad_id, device, owners=True)
        batch.pop("num_tokens")
        owner = batch["owner"]
    else:
        batch = collate(examples, pad_id, device)
        owner = torch.arange(len(examples), device=device)[:, None].expand_as(batch["input_ids"])
    hidden = decoder_hidden(decoder, batch)
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    h, target, who = hidden[:, :-1][keep], labels[keep], owner[:, 1:][keep]
    weight = head_weight(head)
    logits = F.linear(h, weight.to(h.dtype)).float()
    token_logps = -F.cross_entropy(logits, target, reduction="none")
    return torch.zeros(len(examples), device=token_logps.device).index_add(0, who, token_logps)


def model_forward_logps(model, examples: list[Example], pad_id: int, device) -> torch.Tensor:
    batch = collate(examples, pad_id, device)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, -batch["input_ids"].shape[1] :, :].float()  # virtual tokens (if any) dropped
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    token_logps = -F.cross_entropy(logits[:, :-1].transpose(1, 2), labels.clamp(min=0), reduction="none")
    return (token_logps * keep).sum(-1)


def pair_logps(
    model, pairs: list[Pair], pad_id: int, device, pack_length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) sequence log-probabilities of the pairs, both answers in one forward pass."""
    logps = sequence_logps(model, [p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id, device, pack_length)
    return logps[: len(pairs)], logps[len(pairs) :]


class PreferenceObjective:
    """What the training loop optimizes for a DPO job (see loop.SupervisedObjective): each pair weighs the same,
    the loss is the mean sigmoid DPO loss of a micro-batch's pairs against their precomputed reference."""

    def __init__(self, beta: float, pad_id: int, device, pack_length: int | None) -> None:
        self.beta, self.pad_id, self.device, self.pack_length = beta, pad_id, device, pack_length

    def weight(self, pair: Pair) -> int:
        return 1

    def loss(self, model, pairs: list[Pair]) -> tuple[torch.Tensor, int]:
        chosen, rejected = pair_logps(model, pairs, self.pad_id, self.device, self.pack_length)
        ref = torch.tensor([[p.ref_chosen, p.ref_rejected] for p in pairs], device=chosen.device)
        loss = dpo_loss(chosen, rejected, ref[:, 0], ref[:, 1], self.beta).mean()
        return loss, sum(p.tokens for p in pairs)


@contextmanager
def reference_model(model):
    """The model as the frozen reference: the adapter disabled where there is one, in eval mode, no gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), model.disable_adapter() if is_peft(model) else nullcontext():
            yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def measure_logps(model, pairs: list[Pair], pad_id: int, device, batch_pairs: int) -> list[tuple[float, float]]:
    """(chosen, rejected) log-probabilities of every pair as the model is now, batch_pairs pairs at a time."""
    out: list[tuple[float, float]] = []
    for start in range(0, len(pairs), batch_pairs):
        with mixed_precision(device):
            chosen, rejected = pair_logps(model, pairs[start : start + batch_pairs], pad_id, device)
        out += list(zip(chosen.tolist(), rejected.tolist()))
    return out


def fingerprint(pairs: list[Pair]) -> str:
    """Which pairs, token for token: a stored reference is only reused for exactly these."""
    digest = hashlib.sha256()
    for p in pairs:
        for e in (p.chosen, p.rejected):
            for values in (e.input_ids, e.labels):  # lists or int32 arrays (tokenized.py): the same digest
                values = np.asarray(values, dtype=np.int64)
                digest.update(len(values).to_bytes(8, "little") + values.tobytes())
    return digest.hexdigest()


def attach_reference(model, pairs: list[Pair], pad_id: int, device, batch_pairs: int, folder: Path) -> bool:
    """Give every pair its reference log-probabilities: read from `folder` when an earlier attempt stored them for
    the same pairs, else measured on the model with its adapter disabled (call this before any training step has
    changed a full fine-tune's weights) and stored. Returns whether they were measured."""
    path = folder / REFERENCE_FILE
    key = fingerprint(pairs)
    stored = torch.load(path, weights_only=True) if path.is_file() else None
    measured = stored is None or stored.get("fingerprint") != key
    if measured:
        with reference_model(model):
            values = measure_logps(model, pairs, pad_id, device, batch_pairs)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{REFERENCE_FILE}.{os.getpid()}"
        torch.save({"fingerprint": key, "logps": torch.tensor(values, dtype=torch.float64)}, tmp)
        os.replace(tmp, path)  # whole or absent: a crash mid-write leaves no half file to reuse
    else:
        values = stored["logps"].tolist()
    for pair, (chosen, rejected) in zip(pairs, values):
        pair.ref_chosen, pair.ref_rejected = chosen, rejected
    return measured


def preference_rows(
    logps: list[tuple[float, float]], pairs: list[Pair], beta: float, reference_is_model: bool = False
) -> list[dict[str, float]]:
    """Each held-out pair's scores: preference_accuracy 1 where the model gives the chosen answer the higher
    log-probability (0 otherwise), and reward_margin (0 for the reference itself, reference_is_model)."""
    rows = []
    for (chosen, rejected), pair in zip(logps, pairs):
        ref_c, ref_r = (chosen, rejected) if reference_is_model else (pair.ref_chosen, pair.ref_rejected)
        rows.append(
            {
                "preference_accuracy": 1.0 if chosen > rejected else 0.0,
                "reward_margin": beta * (chosen - ref_c) - beta * (rejected - ref_r),
                "chosen_logp": chosen,
                "rejected_logp": rejected,
            }
        )
    return rows

"""Batches of examples as model inputs: padded (collate) or packed (collate_packed).

Sequence packing: several examples share one row of max_seq_length tokens instead of each being padded
to the longest of its batch (with 64-512-token examples, padding wastes about half of every batch).

No example may attend to another in the same row. The row carries position ids that restart at 0 for each
example and no attention mask: transformers then derives a block-diagonal causal mask from the position
ids (masking_utils.find_packed_sequence_indices), for SDPA, eager and flex attention alike. Each example's
first label is masked, so the last token of one example is never trained to predict the next example's
first token: the loss terms are exactly those of the same examples unpacked.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import pad_sequence

from worker.training.data import IGNORE, Example


def collate(batch: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """One padded row per example, with its attention mask."""
    ids = [torch.as_tensor(e.input_ids, dtype=torch.long) for e in batch]
    labels = [torch.as_tensor(e.labels, dtype=torch.long) for e in batch]
    input_ids = pad_sequence(ids, batch_first=True, padding_value=pad_id)
    return {
        "input_ids": input_ids.to(device),
        "labels": pad_sequence(labels, batch_first=True, padding_value=IGNORE).to(device),
        "attention_mask": pad_sequence([torch.ones(len(i), dtype=torch.long) for i in ids], batch_first=True).to(
            device
        ),
    }


def pack_indices(lengths: list[int], row_len: int) -> list[list[int]]:
    """First-fit decreasing: longest examples first, each into the first row with room. Rows hold at most
    row_len tokens; an example longer than row_len (never, once truncated to max_seq_length) gets its own row.
    Returns the examples' positions, row by row."""
    rows: list[list[int]] = []
    room: list[int] = []
    for k in sorted(range(len(lengths)), key=lambda k: lengths[k], reverse=True):
        n = lengths[k]
        for i, free in enumerate(room):
            if n <= free:
                rows[i].append(k)
                room[i] -= n
                break
        else:
            rows.append([k])
            room.append(row_len - n)
    return rows


def pack(examples: list[Example], row_len: int) -> list[list[Example]]:
    """The examples in packed rows (pack_indices)."""
    return [[examples[k] for k in row] for row in pack_indices([len(e.input_ids) for e in examples], row_len)]


def collate_packed(
    batch: list[Example], row_len: int, pad_id: int, device: torch.device, owners: bool = False
) -> dict[str, torch.Tensor]:
    """Rows of packed examples as model inputs, plus `num_tokens` (the real, non-padding tokens) and, with
    owners=True, `owner`: the position in `batch` of the example each token belongs to (-1 for padding), which
    sums a per-token figure back per example (preference tuning's sequence log-probabilities)."""
    rows = pack_indices([len(e.input_ids) for e in batch], row_len)
    width = max(sum(len(batch[k].input_ids) for k in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    owner = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for k in row:
            ex = batch[k]
            n = len(ex.input_ids)
            input_ids[r, offset : offset + n] = torch.as_tensor(ex.input_ids)
            labels[r, offset + 1 : offset + n] = torch.as_tensor(ex.labels[1:])  # first label masked: see above
            position_ids[r, offset : offset + n] = torch.arange(n)
            owner[r, offset : offset + n] = k
            offset += n
        # The padding tail is a sequence of its own (positions restart), so no example attends to it.
        position_ids[r, offset:] = torch.arange(width - offset)
    out = {
        "input_ids": input_ids.to(device),
        "labels": labels.to(device),
        "position_ids": position_ids.to(device),
        "num_tokens": torch.tensor(sum(len(e.input_ids) for e in batch)),
    }
    if owners:
        out["owner"] = owner.to(device)
    return out

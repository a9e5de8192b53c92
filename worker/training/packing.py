"""Sequence packing: several examples share one row of max_seq_length tokens instead of each being padded
to the longest of its batch (with 64-512-token examples, padding wastes about half of every batch).

No example may attend to another in the same row. The row carries position ids that restart at 0 for each
example and no attention mask: transformers then derives a block-diagonal causal mask from the position
ids (masking_utils.find_packed_sequence_indices), for SDPA, eager and flex attention alike. Each example's
first label is masked, so the last token of one example is never trained to predict the next example's
first token: the loss terms are exactly those of the same examples unpacked.
"""

from __future__ import annotations

import torch

from worker.training.data import IGNORE, Example


def pack(examples: list[Example], row_len: int) -> list[list[Example]]:
    """First-fit decreasing: longest examples first, each into the first row with room. Rows hold at most
    row_len tokens; an example longer than row_len (never, once truncated to max_seq_length) gets its own row."""
    rows: list[list[Example]] = []
    room: list[int] = []
    for ex in sorted(examples, key=lambda e: len(e.input_ids), reverse=True):
        n = len(ex.input_ids)
        for i, free in enumerate(room):
            if n <= free:
                rows[i].append(ex)
                room[i] -= n
                break
        else:
            rows.append([ex])
            room.append(row_len - n)
    return rows


def collate_packed(batch: list[Example], row_len: int, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Rows of packed examples as model inputs, plus `num_tokens` (the real, non-padding tokens)."""
    rows = pack(batch, row_len)
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        offset = 0
        for ex in row:
            n = len(ex.input_ids)
            input_ids[r, offset : offset + n] = torch.tensor(ex.input_ids)
            labels[r, offset + 1 : offset + n] = torch.tensor(ex.labels[1:])  # first label masked: see above
            position_ids[r, offset : offset + n] = torch.arange(n)
            offset += n
        # The padding tail is a sequence of its own (positions restart), so no example attends to it.
        position_ids[r, offset:] = torch.arange(width - offset)
    return {
        "input_ids": input_ids.to(device),
        "labels": labels.to(device),
        "position_ids": position_ids.to(device),
        "num_tokens": torch.tensor(sum(len(e.input_ids) for e in batch)),
    }

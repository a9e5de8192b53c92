"""Ground truth for greedy generation: repeated full forward passes, no cache, no `generate`.

The service's generation is compared with this rather than with a library's `generate`: peft's `generate`
for prompt tuning changed with transformers 5.24 (peft 0.21.2) and returns other tokens, while the model's
own forward (which for prompt tuning prepends the virtual tokens) still defines what greedy decoding is.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def forward_greedy(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> str:
    """One row, unpadded: append the argmax of the last position's logits until EOS or max_new_tokens."""
    ids = list(prompt_ids)
    new: list[int] = []
    for _ in range(max_new_tokens):
        x = torch.tensor([ids])
        logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
        token = int(logits[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        new.append(token)
        ids.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()

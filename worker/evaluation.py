"""Evaluation of one model on a job's evaluation rows: teacher-forced perplexity and token accuracy, and
batched greedy generation scored by ROUGE and BERTScore (not one example at a time)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from worker.data import IGNORE, Example, GenerationRow
from worker.training import collate


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    row_scores: list[dict[str, float]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def teacher_forced_stats(model, examples: list[Example], batch_size: int, pad_id: int, device) -> dict[str, float]:
    """Mean loss, perplexity and next-token accuracy over the loss tokens (completions, or all of raw text)."""
    total_nll, total_correct, total_tokens = 0.0, 0, 0
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id, device)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Prompt tuning prepends virtual tokens: keep the positions of the real ones.
        logits = logits[:, -batch["input_ids"].shape[1] :, :].float()
        shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
        mask = shift_labels != IGNORE
        nll = torch.nn.functional.cross_entropy(
            shift_logits.reshape(-1, shift_logits.shape[-1]),
            shift_labels.reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        total_nll += nll.item()
        total_correct += int(((shift_logits.argmax(-1) == shift_labels) & mask).sum())
        total_tokens += int(mask.sum())
    if total_tokens == 0:
        return {}
    loss = total_nll / total_tokens
    return {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)), "token_accuracy": total_correct / total_tokens}


def _is_prompt_learning(model) -> bool:
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _batches(order: list[int], rows: list[GenerationRow], size: int, equal_lengths: bool) -> list[list[int]]:
    """Batches of row indices. Prompt tuning puts its virtual tokens before the left padding and peft ignores
    position ids, so padded rows would see shifted positions: there, a batch holds prompts of one length."""
    if not equal_lengths:
        return [order[i : i + size] for i in range(0, len(order), size)]
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < size and len(rows[batches[-1][0]].prompt_ids) == len(rows[i].prompt_ids):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def generate(model, tokenizer, rows: list[GenerationRow], max_new_tokens: int, batch_size: int, device) -> list[str]:
    """Greedy generation in left-padded batches; rows are grouped by length so little is padding."""
    outputs: list[str | None] = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].prompt_ids))
    pad_id = tokenizer.pad_token_id
    for idx in _batches(order, rows, batch_size, _is_prompt_learning(model)):
        width = max(len(rows[i].prompt_ids) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids = rows[i].prompt_ids
            input_ids[j, width - len(ids) :] = torch.tensor(ids)
            attention[j, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
            use_cache=True,
        )
        new_tokens = generated[:, width:]
        for j, i in enumerate(idx):
            outputs[i] = tokenizer.decode(new_tokens[j], skip_special_tokens=True).strip()
    return [o or "" for o in outputs]


def evaluate(
    model,
    tokenizer,
    *,
    loss_examples: list[Example],
    gen_rows: list[GenerationRow],
    spec: dict,
    device,
    bertscorer=None,
) -> EvalResult:
    """Every requested metric for one model; metrics that do not apply are skipped with a reason."""
    from worker.metrics import rouge_per_row

    wanted, res = set(spec["metrics"]), EvalResult()
    was_training = model.training
    model.eval()
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = True
    try:
        if wanted & {"perplexity", "token_accuracy"}:
            t = time.monotonic()
            stats = teacher_forced_stats(model, loss_examples, spec["batch_size"], tokenizer.pad_token_id, device)
            res.metrics.update({k: v for k, v in stats.items() if k in wanted or k == "eval_loss"})
            res.timings["teacher_forced_s"] = time.monotonic() - t
        gen_metrics = wanted & {"rouge", "bertscore"}
        if gen_metrics and not gen_rows:
            for m in sorted(gen_metrics):
                res.skipped[m] = "raw-text dataset: there is no reference completion to generate against"
        elif gen_metrics:
            t = time.monotonic()
            res.outputs = generate(model, tokenizer, gen_rows, spec["max_new_tokens"], spec["batch_size"], device)
            elapsed = time.monotonic() - t
            res.timings["generation_s"] = elapsed
            refs = [r.reference for r in gen_rows]
            res.row_scores = [{} for _ in gen_rows]
            if "rouge" in gen_metrics:
                for row, scores in zip(res.row_scores, rouge_per_row(res.outputs, refs)):
                    row.update(scores)
            if "bertscore" in gen_metrics and bertscorer is not None:
                t = time.monotonic()
                for row, scores in zip(res.row_scores, bertscorer.per_row(res.outputs, refs)):
                    row.update(scores)
                res.timings["bertscore_s"] = time.monotonic() - t
            keys = res.row_scores[0].keys() if res.row_scores else []
            for key in keys:
                res.metrics[key] = sum(r[key] for r in res.row_scores) / len(res.row_scores)
    finally:
        if use_cache is not None:
            model.config.use_cache = use_cache
        model.train(was_training)
    return res

"""Evaluation of one model on a job's evaluation rows: teacher-forced perplexity and token accuracy, and
batched greedy generation scored by ROUGE and BERTScore (not one example at a time).

Every aggregate is recomputable from the per-row figures stored with each row: generation metrics are the
mean over the rows that have them, eval_loss = sum(nll) / sum(loss_tokens), perplexity = exp(eval_loss)
and token_accuracy = sum(correct_tokens) / sum(loss_tokens), summed in row order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from app.core.job_spec import EvaluationSpec
from app.core.metrics import perplexity
from worker.evaluation.generation import generate, generation_batch_size
from worker.training.data import IGNORE, Example, Formatter, GenerationRow, answer_records
from worker.training.modeling import mixed_precision
from worker.training.packing import collate
from worker.training.preference import Pair, measure_logps, preference_rows

PROMPT_CHARS = 2000  # a raw-text row is shown (and stored) by its first characters


@dataclass
class EvalResult:
    metrics: dict[str, float] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)  # per generation row
    row_scores: list[dict[str, float]] = field(default_factory=list)  # per generation row
    tf_rows: list[dict[str, float]] = field(default_factory=list)  # per loss example: nll, loss/correct tokens
    pair_rows: list[dict[str, float]] = field(default_factory=list)  # per preference pair (preference.preference_rows)
    skipped: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class EvalSet:
    """A job's evaluation rows and what each can be measured by. Only rows with loss tokens have a loss
    example and only rows with a completion a generation row: the index lists map both back to the rows,
    so every row keeps its position (row_index), aligned across jobs on the same rows.

    Preference rows are measured as pairs (preference accuracy, reward margin) and, by their preferred answer,
    like any prompt and completion (loss, generation)."""

    rows: list[dict]
    loss_examples: list[Example]
    loss_index: list[int]  # loss_examples[k] is rows[loss_index[k]]
    gen_rows: list[GenerationRow]
    gen_index: list[int]  # gen_rows[k] is rows[gen_index[k]]
    pairs: list[Pair] = field(default_factory=list)
    pair_index: list[int] = field(default_factory=list)  # pairs[k] is rows[pair_index[k]]

    @classmethod
    def build(cls, fmt: Formatter, rows: list[dict], preference: bool = False) -> EvalSet:
        pairs, pair_index = [], []
        if preference:
            made = [fmt.pair(r) for r in rows]
            pair_index = [i for i, p in enumerate(made) if p is not None]
            pairs = [Pair(*made[i]) for i in pair_index]
            answered = [answer_records(r)[0] for r in rows]  # each prompt with its preferred answer
        else:
            answered = rows
        examples = [fmt.example(r) for r in answered]
        gens = [fmt.generation_row(r) for r in answered]
        loss_index = [i for i, e in enumerate(examples) if e is not None and e.num_loss_tokens > 0]
        gen_index = [i for i, g in enumerate(gens) if g is not None]
        return cls(
            rows,
            [examples[i] for i in loss_index],
            loss_index,
            [gens[i] for i in gen_index],
            gen_index,
            pairs,
            pair_index,
        )

    def gen_records(self) -> list[dict]:
        """The records of gen_rows, in their order."""
        return [self.rows[i] for i in self.gen_index]

    def shown(self) -> list[tuple[str, str]]:
        """What each row shows: its prompt and reference, or for raw text the text itself and no reference."""
        out = [(r.get("text", "")[:PROMPT_CHARS], "") for r in self.rows]
        for i, gen in zip(self.gen_index, self.gen_rows):
            out[i] = (gen.prompt, gen.reference)
        return out

    def outputs(self, result: EvalResult) -> list[str | None]:
        """The generated output of each row (None where nothing was generated)."""
        out: list[str | None] = [None] * len(self.rows)
        for k, i in enumerate(self.gen_index[: len(result.outputs)]):
            out[i] = result.outputs[k]
        return out

    def scores(self, result: EvalResult) -> list[dict[str, float] | None]:
        """Each row's generation scores merged with its teacher-forced sums (None where it has neither)."""
        out: list[dict[str, float]] = [{} for _ in self.rows]
        for k, i in enumerate(self.gen_index[: len(result.row_scores)]):
            out[i].update(result.row_scores[k])
        for k, i in enumerate(self.loss_index[: len(result.tf_rows)]):
            out[i].update(result.tf_rows[k])
        for k, i in enumerate(self.pair_index[: len(result.pair_rows)]):
            out[i].update(result.pair_rows[k])
        return [d or None for d in out]


def teacher_forced_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """The aggregate teacher-forced metrics from per-example sums, in row order."""
    tokens = sum(r["loss_tokens"] for r in rows)
    if tokens == 0:
        return {}
    loss = sum(r["nll"] for r in rows) / tokens
    correct = sum(r["correct_tokens"] for r in rows)
    return {"eval_loss": loss, "perplexity": perplexity(loss), "token_accuracy": correct / tokens}


GPU_GENERATION_BATCH = 128  # measured on an H200, 1B shape: 1,460 generated tokens/s against 298 at 16
CPU_GENERATION_BATCH = 16
TEACHER_FORCED_BATCH = 16  # its logits are [rows, length, vocabulary] in fp32: 4 GiB at 16 x 512 x 128k


@torch.no_grad()
def teacher_forced_stats(
    model, examples: list[Example], batch_size: int, pad_id: int, device
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Mean loss, perplexity and next-token accuracy over the loss tokens (completions, or all of raw text),
    and each example's sums they are computed from: {"nll", "loss_tokens", "correct_tokens"}."""
    rows: list[dict[str, float]] = []
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id, device)
        with mixed_precision(device):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        # Prompt tuning prepends virtual tokens: keep the positions of the real ones.
        logits = logits[:, -batch["input_ids"].shape[1] :, :].float()
        shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
        mask = shift_labels != IGNORE
        nll = torch.nn.functional.cross_entropy(
            shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE, reduction="none"
        )  # (batch, positions), 0 where ignored
        nll_sums = nll.double().sum(-1).tolist()
        tokens = mask.sum(-1).tolist()
        correct = ((shift_logits.argmax(-1) == shift_labels) & mask).sum(-1).tolist()
        rows += [{"nll": a, "loss_tokens": b, "correct_tokens": c} for a, b, c in zip(nll_sums, tokens, correct)]
    return teacher_forced_metrics(rows), rows


def evaluate(
    model,
    tokenizer,
    *,
    loss_examples: list[Example],
    gen_rows: list[GenerationRow],
    spec: EvaluationSpec | dict,
    device,
    bertscorer=None,
    pairs: list[Pair] | None = None,
    beta: float | None = None,
    reference_is_model: bool = False,
    gen_records: list[dict] | None = None,
) -> EvalResult:
    """Every requested metric and grader for one model; metrics that do not apply are skipped with a reason.

    With preference `pairs` (a DPO job), always their preference accuracy and reward margin against each pair's
    reference log-probabilities, with `beta`; reference_is_model: this model is the reference (the base).
    gen_records: the rows of gen_rows as records, where the SQL graders find each row's database."""
    from worker.evaluation.graders import grade
    from worker.evaluation.metrics import rouge_per_row

    spec = spec if isinstance(spec, EvaluationSpec) else EvaluationSpec.model_validate(spec)
    wanted, res = set(spec.metrics), EvalResult()
    was_training = model.training
    model.eval()
    use_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = True
    try:
        if loss_examples:  # always: eval_loss picks checkpoints, and one forward pass is cheap next to generation
            t = time.monotonic()
            tf_batch = min(TEACHER_FORCED_BATCH, generation_batch_size(spec.batch_size, device))
            stats, res.tf_rows = teacher_forced_stats(model, loss_examples, tf_batch, tokenizer.pad_token_id, device)
            res.metrics.update({k: v for k, v in stats.items() if k in wanted or k == "eval_loss"})
            res.timings["teacher_forced_s"] = time.monotonic() - t
        if pairs:
            t = time.monotonic()
            logps = measure_logps(model, pairs, tokenizer.pad_token_id, device, TEACHER_FORCED_BATCH // 2)
            res.pair_rows = preference_rows(logps, pairs, beta, reference_is_model)
            for key in ("preference_accuracy", "reward_margin"):
                res.metrics[key] = sum(r[key] for r in res.pair_rows) / len(res.pair_rows)
            res.timings["preference_s"] = time.monotonic() - t
        gen_metrics = wanted & {"rouge", "bertscore"}
        graders = spec.graders
        if (gen_metrics or graders) and not gen_rows:
            for m in sorted(gen_metrics) + [g.type for g in graders]:
                res.skipped[m] = "raw-text dataset: there is no reference completion to generate against"
        elif gen_metrics or graders:
            t = time.monotonic()
            gen_batch = generation_batch_size(spec.batch_size, device)
            res.outputs = generate(model, tokenizer, gen_rows, spec.max_new_tokens, gen_batch, device)
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
            if graders:
                t = time.monotonic()
                grading = grade(graders, res.outputs, refs, gen_records or [{} for _ in gen_rows])
                for row, scores in zip(res.row_scores, grading.rows):
                    row.update(scores)
                res.skipped.update(grading.skipped)
                res.timings["graders_s"] = time.monotonic() - t
            # each score's mean over the rows that have it (a grader may leave a row unscored)
            for key in dict.fromkeys(k for r in res.row_scores for k in r):
                scored = [r[key] for r in res.row_scores if key in r]
                res.metrics[key] = sum(scored) / len(scored)
    finally:
        if use_cache is not None:
            model.config.use_cache = use_cache
        model.train(was_training)
    return res

"""What the training child writes about its results, beside the job row: the base and tuned evaluations with
one row per evaluation row, and a row per checkpoint. Every write goes through the job's fenced context."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from app.core.tables import Checkpoint, Evaluation, EvaluationRow, utcnow
from worker.child.job_context import JobContext
from worker.evaluation.evaluate import EvalResult, EvalSet


def _evaluation(ctx: JobContext, subject: str, split: str, result: EvalResult, eval_set: EvalSet) -> Evaluation:
    return Evaluation(
        job_id=ctx.job_id,
        subject=subject,
        split=split,
        metrics=result.metrics,
        num_rows=len(eval_set.rows),
        details={"skipped": result.skipped, "timings": result.timings},
    )


def store_base_eval(ctx: JobContext, results: dict[str, EvalResult], eval_sets: dict[str, EvalSet]) -> None:
    """Per split (validation, test), one EvaluationRow per row (row_index = its position in the split) with the base
    model's output and scores. Every split in one transaction: a resumed attempt finds all of them or none."""

    def store(s: Session) -> None:
        s.execute(delete(EvaluationRow).where(EvaluationRow.job_id == ctx.job_id))
        s.execute(delete(Evaluation).where(Evaluation.job_id == ctx.job_id))
        for split, result in results.items():
            eval_set = eval_sets[split]
            outputs, scores = eval_set.outputs(result), eval_set.scores(result)
            s.add(_evaluation(ctx, "base", split, result, eval_set))
            for i, (prompt, reference) in enumerate(eval_set.shown()):
                s.add(
                    EvaluationRow(
                        job_id=ctx.job_id,
                        split=split,
                        row_index=i,
                        prompt=prompt,
                        reference=reference,
                        base_output=outputs[i],
                        base_scores=scores[i],
                    )
                )

    ctx.write(store)


def store_tuned_eval(ctx: JobContext, results: dict[str, EvalResult], eval_sets: dict[str, EvalSet]) -> None:
    """The fine-tuned model's evaluation per split, its outputs and scores beside the base model's on each row."""

    def store(s: Session) -> None:
        s.execute(delete(Evaluation).where(Evaluation.job_id == ctx.job_id, Evaluation.subject == "tuned"))
        for split, result in results.items():
            eval_set = eval_sets[split]
            outputs, scores = eval_set.outputs(result), eval_set.scores(result)
            s.add(_evaluation(ctx, "tuned", split, result, eval_set))
            for i in range(len(eval_set.rows)):
                s.execute(
                    update(EvaluationRow)
                    .where(
                        EvaluationRow.job_id == ctx.job_id, EvaluationRow.split == split, EvaluationRow.row_index == i
                    )
                    .values(tuned_output=outputs[i], tuned_scores=scores[i])
                )

    ctx.write(store)


def record_checkpoint(ctx: JobContext, step: int, epoch: float, path: Path, metrics: dict, evaluated: bool) -> None:
    """The checkpoint's row. Its files are on disk already, so the row may follow a database that was away."""
    saved_at = utcnow()

    def record(s: Session) -> None:
        s.execute(delete(Checkpoint).where(Checkpoint.job_id == ctx.job_id, Checkpoint.step == step))
        s.add(
            Checkpoint(
                job_id=ctx.job_id,
                step=step,
                epoch=epoch,
                metrics=metrics,
                evaluated=evaluated,
                dir_name=ctx.files.relative(path),
                created_at=saved_at,
            )
        )

    ctx.write(record, defer=True)


def record_checkpoint_archive(ctx: JobContext, step: int, archive: Path, digest: str, size: int) -> None:
    values = {"adapter_name": ctx.files.relative(archive), "adapter_sha256": digest, "adapter_bytes": size}
    ctx.write(
        lambda s: s.execute(
            update(Checkpoint).where(Checkpoint.job_id == ctx.job_id, Checkpoint.step == step).values(**values)
        )
    )

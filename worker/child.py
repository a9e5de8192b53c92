"""The training child: `python -m worker.child JOB_ID ATTEMPT`, spawned by the Celery task per job.

CUDA lives only here, so a crash, an out-of-memory or a kill -9 takes down this process and not the
worker. Every database write is fenced on (status='running', attempt): a cancelled or re-claimed job
ignores this process from then on, and the process notices and stops at its next check.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from contextlib import suppress
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.core.metrics import LOWER_IS_BETTER
from app.core.naming import fine_tuned_name
from app.core.settings import get_settings
from app.core.tables import Checkpoint, Evaluation, EvaluationRow, File, Job, JobStatus, utcnow
from app.datasets import iter_records
from worker.job_context import (
    EXIT_CRASH,
    EXIT_DONE,
    EXIT_INTERRUPTED,
    Interrupted,
    JobContext,
    LostJob,
    UserError,
)

log = logging.getLogger("ftaas.child")


def _load_records(settings, file_row: File) -> list[dict]:
    path = settings.uploads_dir / file_row.storage_name
    if not path.is_file():
        raise UserError("file_missing", f"file {file_row.id} is no longer stored")
    return list(
        iter_records(
            path,
            file_row.format,
            column_mapping=file_row.column_mapping,
            completion_separator=file_row.completion_separator,
        )
    )


def _store_base_eval(ctx: JobContext, result, eval_set) -> None:
    """One EvaluationRow per evaluation row (row_index = its position), with the base model's output and scores."""
    outputs, scores = eval_set.outputs(result), eval_set.scores(result)

    def store(s: Session) -> None:
        s.execute(delete(EvaluationRow).where(EvaluationRow.job_id == ctx.job_id))
        s.execute(delete(Evaluation).where(Evaluation.job_id == ctx.job_id))
        s.add(
            Evaluation(
                job_id=ctx.job_id,
                subject="base",
                metrics=result.metrics,
                num_rows=len(eval_set.rows),
                details={"skipped": result.skipped, "timings": result.timings},
            )
        )
        for i, (prompt, reference) in enumerate(eval_set.shown()):
            s.add(
                EvaluationRow(
                    job_id=ctx.job_id,
                    row_index=i,
                    prompt=prompt,
                    reference=reference,
                    base_output=outputs[i],
                    base_scores=scores[i],
                )
            )

    ctx.write(store)


def _store_tuned_eval(ctx: JobContext, result, eval_set) -> None:
    outputs, scores = eval_set.outputs(result), eval_set.scores(result)

    def store(s: Session) -> None:
        s.execute(delete(Evaluation).where(Evaluation.job_id == ctx.job_id, Evaluation.subject == "tuned"))
        s.add(
            Evaluation(
                job_id=ctx.job_id,
                subject="tuned",
                metrics=result.metrics,
                num_rows=len(eval_set.rows),
                details={"skipped": result.skipped, "timings": result.timings},
            )
        )
        for i in range(len(eval_set.rows)):
            s.execute(
                update(EvaluationRow)
                .where(EvaluationRow.job_id == ctx.job_id, EvaluationRow.row_index == i)
                .values(tuned_output=outputs[i], tuned_scores=scores[i])
            )

    ctx.write(store)


def selection_for(ev_spec: dict, has_generation_rows: bool) -> tuple[str, bool] | None:
    """(metric, higher_is_better) that picks the shipped checkpoint, or None to ship the final weights."""
    metric = ev_spec.get("selection_metric", "auto")
    if metric == "last":
        return None
    if metric == "auto":
        metric = "rougeL" if has_generation_rows and "rouge" in ev_spec["metrics"] else "eval_loss"
    elif not has_generation_rows and metric not in LOWER_IS_BETTER | {"token_accuracy"}:
        metric = "eval_loss"  # raw text has no completions to generate; fall back to the loss
    return metric, metric not in LOWER_IS_BETTER


def metrics_for_selection(selection: tuple[str, bool] | None) -> set[str]:
    """The evaluation.metrics entries that produce the selection metric (eval_loss is always measured)."""
    if selection is None or selection[0] == "eval_loss":
        return set()
    name = selection[0]
    return {"rouge" if name.startswith("rouge") else "bertscore" if name.startswith("bertscore") else name}


def _package_checkpoints(ctx: JobContext, model, tokenizer, card_for) -> None:
    """An archive for every evaluated checkpoint whose weights are on disk, for GET .../adapter?step=N.

    Loads each checkpoint's weights into `model`: call it after the shipped model has been packaged.
    """
    from worker.artifacts import package_adapter
    from worker.training import load_trainable_weights, weights_file

    jobs_dir = ctx.settings.jobs_dir
    with ctx.Session() as s:
        rows = s.execute(
            select(Checkpoint.step, Checkpoint.dir_name, Checkpoint.metrics, Checkpoint.adapter_name)
            .where(Checkpoint.job_id == ctx.job_id, Checkpoint.evaluated.is_(True))
            .order_by(Checkpoint.step)
        ).all()
    out_dir = ctx.workdir / "checkpoint-archives"
    for step, dir_name, metrics, done in rows:
        if done and (jobs_dir / done).is_file():  # packaged by an earlier attempt
            continue
        if weights_file(jobs_dir / dir_name) is None:
            continue
        load_trainable_weights(jobs_dir / dir_name, model)
        metrics = {k: v for k, v in (metrics or {}).items() if k != "train_loss"}
        archive, digest, size = package_adapter(
            model,
            tokenizer,
            out_dir / f".step-{step}",
            out_dir / f"step-{step}.tar.gz",
            card_for(step, metrics),
            keep_folder=False,
        )
        values = {"adapter_name": str(archive.relative_to(jobs_dir)), "adapter_sha256": digest, "adapter_bytes": size}
        ctx.write(
            lambda s, step=step, values=values: s.execute(
                update(Checkpoint).where(Checkpoint.job_id == ctx.job_id, Checkpoint.step == step).values(**values)
            )
        )


def run(ctx: JobContext) -> None:
    import torch

    from worker.artifacts import model_card, package_adapter
    from worker.auto_plan import choose_adapter_type, choose_micro_batch, with_micro_batch
    from worker.data import Formatter, split_rows
    from worker.evaluation import EvalResult, EvalSet, evaluate
    from worker.metrics import get_bertscorer, resolve_bertscore_model
    from worker.modeling import (
        ModelRefused,
        attention_without_per_shape_plans,
        count_params,
        count_params_of_config,
        load_base_model,
        load_tokenizer,
        peak_memory_bytes,
        pick_device,
        wrap_for_training,
    )
    from worker.training import (
        Hooks,
        TrainConfig,
        TrainingInterrupted,
        checkpoint_step,
        latest_checkpoint,
        load_trainable_weights,
        packs,
        train,
    )

    settings = ctx.settings
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    attention_without_per_shape_plans()
    with ctx.Session() as s:
        job = s.get(Job, ctx.job_id)
        train_file = s.get(File, job.training_file_id)
        val_file = s.get(File, job.validation_file_id) if job.validation_file_id else None
        has_base_eval = s.scalar(select(Evaluation.id).where(Evaluation.job_id == job.id, Evaluation.subject == "base"))
    spec, ev_spec = job.spec, job.spec["evaluation"]
    torch.manual_seed(job.seed)

    ctx.progress({"phase": "loading_data"}, force=True)
    rows = _load_records(settings, train_file)
    if val_file is not None:
        train_rows, val_rows = rows, _load_records(settings, val_file)
    else:
        train_rows, val_rows = split_rows(rows, spec["training"]["validation_split"], job.seed)
    if not train_rows or not val_rows:
        raise UserError("too_few_rows", f"training file {train_file.id} needs at least 2 rows (one is held out)")

    device = pick_device()
    try:
        tokenizer = load_tokenizer(job.model_source)  # checks the model directory before reading anything
    except ModelRefused as exc:
        raise UserError(exc.code, str(exc)) from exc
    fmt = Formatter(tokenizer, spec["training"]["max_seq_length"])
    train_examples = [fmt.example(r) for r in train_rows]
    train_examples = [e for e in train_examples if e.num_loss_tokens > 0]
    if not train_examples:
        raise UserError("no_trainable_tokens", "every row's completion was cut off by max_seq_length")
    eval_set = EvalSet.build(fmt, val_rows[: ev_spec["max_rows"]])
    ctx.event(
        f"Data: {len(train_examples)} training rows, {len(eval_set.rows)} evaluation rows ({train_file.shape}); "
        f"device {device}"
    )

    ctx.progress({"phase": "loading_model"}, force=True)
    if spec["adapter"]["type"] == "auto":
        kind, why = choose_adapter_type(count_params_of_config(job.model_source), device)
        spec = {**spec, "adapter": {**spec["adapter"], "type": kind}}
        ctx.update(spec=spec)  # a resumed attempt reads the choice back instead of choosing again
        ctx.event(f"adapter auto: {kind} ({why})")
    try:
        model = load_base_model(job.model_source, spec["adapter"], device, settings.full_finetune_max_params)
    except ModelRefused as exc:
        raise UserError(exc.code, str(exc)) from exc

    selection = selection_for(ev_spec, bool(eval_set.gen_rows))
    # Checkpoint evaluations measure every requested metric, and whatever the selection metric needs.
    ckpt_metrics = sorted(set(ev_spec["metrics"]) | metrics_for_selection(selection))
    bertscorer = None
    if "bertscore" in ckpt_metrics and eval_set.gen_rows:
        name, layers = resolve_bertscore_model(settings.bertscore_model, settings.bertscore_num_layers)
        bertscorer = get_bertscorer(name, layers, str(device))

    def evaluate_all(metrics: list[str]):  # the model as it is now (base, checkpoint, tuned) on the evaluation rows
        return evaluate(
            model,
            tokenizer,
            loss_examples=eval_set.loss_examples,
            gen_rows=eval_set.gen_rows,
            spec={**ev_spec, "metrics": metrics},
            device=device,
            bertscorer=bertscorer,
        )

    if not has_base_eval:  # a resumed attempt keeps the base measurement it already made
        ctx.progress({"phase": "evaluating_base"}, force=True)
        base = evaluate_all(ev_spec["metrics"])
        _store_base_eval(ctx, base, eval_set)
        ctx.event("Base model evaluated", type="metrics", data={"subject": "base", **base.metrics})

    model = wrap_for_training(
        model, spec["adapter"], job.model_source, spec["training"]["gradient_checkpointing"], tokenizer.eos_token_id
    )
    trainable, total = count_params(model)
    ctx.update(trainable_params=trainable, total_params=total)
    if spec["training"]["micro_batch_size"] == "auto":
        micro, why = choose_micro_batch(
            model,
            [len(e.input_ids) for e in train_examples],
            spec["training"]["max_seq_length"],
            packs(spec),
            trainable,
            device,
        )
        spec = with_micro_batch(spec, micro)
        ctx.update(spec=spec)
        ctx.event(f"micro_batch_size auto: {why}")
    ctx.event(f"{spec['adapter']['type']}: {trainable:,} trainable parameters of {total:,}")

    evaluations: dict[int, EvalResult] = {}  # this attempt's checkpoint evaluations, by step

    def on_evaluate(step: int, epoch: float) -> dict:
        result = evaluations[step] = evaluate_all(ckpt_metrics)
        shown = ("eval_loss", "rougeL", "bertscore_f1", selection[0] if selection else "eval_loss")
        ctx.event(
            f"Step {step} (epoch {epoch:.2f}) evaluated: "
            + ", ".join(f"{k} {result.metrics[k]:.4f}" for k in dict.fromkeys(shown) if k in result.metrics),
            type="metrics",
            data={"step": step, "epoch": round(epoch, 4), **result.metrics},
        )
        return result.metrics

    def on_checkpoint(step: int, epoch: float, path: Path, metrics: dict, evaluated: bool) -> None:
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
                    dir_name=str(path.relative_to(settings.jobs_dir)),
                    created_at=saved_at,
                )
            )

        ctx.write(record, defer=True)  # the files are on disk already; the row may follow the database back

    hooks = Hooks(
        on_progress=ctx.progress,
        on_log=lambda d: ctx.event(f"Step {d['step']}: train_loss {d['train_loss']:.4f}", type="metrics", data=d),
        on_checkpoint=on_checkpoint,
        on_evaluate=on_evaluate,
        should_stop=ctx.should_stop,
        interrupt_requested=lambda: ctx.interrupt_requested,
    )
    cfg = TrainConfig.from_spec(spec, job.seed, settings.checkpoint_every_s)
    if cfg.early_stopping_patience and selection is None:
        ctx.event("early_stopping_patience is ignored: selection_metric 'last' has no metric to stop on")
    ckpt_root = ctx.workdir / "checkpoints"
    resume = latest_checkpoint(ckpt_root)
    if resume is not None:
        ctx.event(f"Resuming from the checkpoint of step {checkpoint_step(resume)}")
    ctx.in_training = True
    try:
        summary = train(model, train_examples, cfg, tokenizer.pad_token_id, device, ckpt_root, hooks, selection)
    except TrainingInterrupted as exc:
        raise Interrupted(str(exc)) from exc
    finally:
        ctx.in_training = False
    if ctx.interrupt_requested:  # asked during the last step: its checkpoint is saved, the rest can wait
        raise Interrupted("training finished; evaluation and packaging are left to the next attempt")
    if summary["stopped_early"] is not None:
        ctx.event(
            f"Stopped early at step {summary['stopped_early']} of {summary['total_steps']}: "
            f"{cfg.early_stopping_patience} evaluations in a row without a better {selection[0]}"
        )
    ctx.event(
        f"Training done: {summary['steps']} steps in {summary['seconds']:.1f}s"
        + (f" (resumed at step {summary['resumed_from']})" if summary["resumed_from"] else "")
    )
    # The final step is always evaluated, so its weights are on disk like the best one's.
    ship_step = summary["best_step"] if summary["best_step"] is not None else summary["steps"]
    load_trainable_weights(ckpt_root / f"step-{ship_step}", model)
    if ship_step != summary["steps"]:
        ctx.event(
            f"Shipping the checkpoint of step {ship_step}: best {selection[0]} "
            f"{summary['best_value']:.4f} of the evaluated checkpoints"
        )

    ctx.progress({"phase": "evaluating"}, force=True)
    # The shipped checkpoint was evaluated during training on the same rows with the same weights: reuse
    # that result when this attempt made it with exactly the requested metrics; measure again otherwise.
    tuned = evaluations.get(ship_step) if set(ckpt_metrics) == set(ev_spec["metrics"]) else None
    if tuned is None:
        tuned = evaluate_all(ev_spec["metrics"])
    _store_tuned_eval(ctx, tuned, eval_set)
    ctx.event("Fine-tuned model evaluated", type="metrics", data={"subject": "tuned", **tuned.metrics})

    ctx.progress({"phase": "packaging"}, force=True)
    with ctx.Session() as s:
        base_metrics = s.scalar(
            select(Evaluation.metrics).where(Evaluation.job_id == job.id, Evaluation.subject == "base")
        )
    name = fine_tuned_name(job)
    job_info = {"id": job.id, "model": job.model, "fine_tuned_model": name, "seed": job.seed}
    card = model_card(job_info, spec, base_metrics, tuned.metrics, (trainable, total))
    archive, digest, size = package_adapter(
        model, tokenizer, ctx.workdir / "adapter", ctx.workdir / "adapter.tar.gz", card
    )
    _package_checkpoints(
        ctx,
        model,
        tokenizer,
        lambda step, metrics: model_card(job_info, spec, base_metrics, metrics, (trainable, total), step=step),
    )
    ok = ctx.finish(
        JobStatus.succeeded,
        fine_tuned_model=name,
        phase="done",
        trained_tokens=summary["trained_tokens"],
        train_seconds=summary["train_seconds"],
        peak_memory_bytes=max(summary["peak_memory_bytes"], peak_memory_bytes(device)),
        adapter_name=str(archive.relative_to(settings.jobs_dir)),
        adapter_sha256=digest,
        adapter_bytes=size,
        step=summary["steps"],
        epoch=summary["epoch"],
    )
    if not ok:
        raise LostJob


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s child %(levelname)s %(message)s")
    job_id, attempt = argv[0], int(argv[1])
    settings = get_settings()
    if settings.hf_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Packed micro-batches change shape every step; expandable segments keep the CUDA caching allocator from
    # fragmenting (and from synchronising on frees to make room).
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    ctx = JobContext(job_id, attempt)
    signal.signal(signal.SIGTERM, ctx.on_sigterm)
    try:
        run(ctx)
        return EXIT_DONE
    except Interrupted as exc:
        log.info("job %s attempt %s interrupted by a shutdown: %s", job_id, attempt, exc)
        with suppress(Exception):  # the job may no longer be ours
            ctx.event(f"Attempt {attempt} interrupted by its worker's shutdown: {exc}")
        return EXIT_INTERRUPTED
    except LostJob:
        log.info("job %s attempt %s is no longer ours; stopping", job_id, attempt)
        return EXIT_DONE
    except UserError as exc:
        ctx.finish(JobStatus.failed, error={"code": exc.code, "message": str(exc), "param": None})
        return EXIT_DONE
    except Exception as exc:  # noqa: BLE001 - report, then let the parent decide on a retry
        traceback.print_exc()
        try:
            ctx.event(f"Attempt {attempt} crashed: {type(exc).__name__}: {exc}", level="error")
        except Exception:  # noqa: BLE001 - the database may be the thing that failed
            pass
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

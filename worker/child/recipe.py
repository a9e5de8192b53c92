"""The training child: `python -m worker.child train JOB_ID ATTEMPT`, spawned by the training task per attempt.

One attempt of one job is a recipe, read top to bottom as pytorch/torchtune's recipes read: load data, load
model, evaluate base, train, evaluate tuned, package. Each phase is a method; what one phase hands the next
lives on the recipe. CUDA lives only in this process, so a crash, an out-of-memory or a kill -9 takes it down
and not the worker. Every database write is fenced on (status='running', attempt) through the JobContext: a
cancelled or re-claimed job ignores this process from then on, and the process notices and stops.
"""

from __future__ import annotations

import logging
import shutil
import signal
import traceback
from contextlib import nullcontext, suppress

from sqlalchemy import select

from app.core.job_spec import JobSpec
from app.core.metrics import metrics_for_selection, selection_for
from app.core.naming import fine_tuned_name
from app.core.settings import get_settings, public_model_name
from app.core.storage import tokenized_prefix, upload_key
from app.core.tables import Checkpoint, Evaluation, File, Job, JobStatus
from worker.child.compiled_kernels import share_compiled
from worker.child.job_context import (
    EXIT_CRASH,
    EXIT_DONE,
    EXIT_INTERRUPTED,
    FollowerContext,
    Interrupted,
    JobContext,
    LostJob,
    UserError,
)
from worker.child.process import prepare_process, prepare_torch, set_up_logging
from worker.child.stored_results import (
    record_checkpoint,
    record_checkpoint_archive,
    store_base_eval,
    store_tuned_eval,
)

log = logging.getLogger("ftaas.child")


class TrainingRecipe:
    """One attempt of one job. `run` calls the phases in order; a resumed attempt goes through the same
    phases (its base evaluation is kept, its training resumes from the last checkpoint)."""

    def __init__(self, ctx: JobContext, ranks=None) -> None:
        from worker.training.distributed import Ranks

        self.ctx, self.settings = ctx, ctx.settings
        self.ranks = ranks or Ranks()  # a job on several GPUs: this process's rank (the main one writes)
        self.followers_left = not self.ranks.parallel  # the other ranks are done with their collectives
        self.sharded = False  # the model is sharded over the ranks (FSDP): they evaluate and package it together
        self.evaluations: dict = {}  # this attempt's checkpoint evaluations (EvalResult), by step
        self.tuned_test = None  # the shipped model on the test rows (EvalResult), where the job has them

    def run(self) -> None:
        import torch

        from worker.child.startup import StartupClock

        ranks = self.ranks
        prepare_torch(self.settings)
        self.read_job()
        self.clock = StartupClock(self.job.started_at)
        if ranks.main:  # the host's files are the main rank's to put in place; the others read them after
            self.restore_checkpoints()
        self.clock.lap("checkpoints")
        if ranks.main:  # kernels other hosts compiled (worker/child/compiled_kernels.py)
            share_compiled(self.ctx.cache.store, "pull")
        self.clock.lap("kernels")
        torch.manual_seed(self.job.seed)
        if ranks.main:
            self.load_data()  # tokenized and stored once; the other ranks read the tokens back
        ranks.wait_for_main()
        if not ranks.main:
            self.load_data()
        self.load_model()
        self.clock.lap("model")
        # An adapter can be switched off: its base is measured after training, so that the first step comes as soon
        # as the model is loaded (a small job's base evaluation took as long as its training). A full fine-tune's
        # base weights are gone once it has stepped: measured first.
        base_later = self.spec.adapter.type in ("lora", "qlora")
        if not base_later and not self.sharded:
            if ranks.main:
                self.evaluate_base()
            ranks.wait_for_main()
        self.prepare_training()
        if not base_later and self.sharded:  # still the base: nothing has stepped; every rank takes part
            self.evaluate_base()
        self.clock.lap("adapter")
        summary = self.train()
        if not (ranks.main or self.sharded):
            return  # evaluation and packaging are the main rank's, once (a sharded model's are every rank's)
        if ranks.main:
            share_compiled(self.ctx.cache.store, "push")  # what this host compiled, for the others' first jobs
        if base_later:
            self.evaluate_base(adapter_off=True)
        tuned = self.evaluate_tuned(summary)
        self.package(summary, tuned)
        if self.sharded:  # the last collective is behind every rank
            from worker.training.distributed import leave

            leave()
            self.followers_left = True

    # ------------------------------------------------------------------------------------------- phases

    def read_job(self) -> None:
        with self.ctx.Session() as s:
            self.job = s.get(Job, self.ctx.job_id)
            self.train_file = s.get(File, self.job.training_file_id)
            self.val_file = s.get(File, self.job.validation_file_id) if self.job.validation_file_id else None
            self.test_file = s.get(File, self.job.test_file_id) if self.job.test_file_id else None
            # the splits an earlier attempt measured the base on (all of them, or none: one transaction)
            self.base_splits = set(
                s.scalars(
                    select(Evaluation.split).where(Evaluation.job_id == self.job.id, Evaluation.subject == "base")
                )
            )
        self.spec = JobSpec.of(self.job.spec)

    def restore_checkpoints(self) -> None:
        """This host's checkpoints folder made equal to the store's: an attempt resumes from the last checkpoint any
        host stored, on any host, with or without a cache (a new host, a lost disk). Room is made in the cache
        first, sparing this job and its files."""
        ctx = self.ctx
        keep = [ctx.cache.key_of(ctx.files.root)]
        keep += [upload_key(f.storage_name) for f in (self.train_file, self.val_file, self.test_file) if f]
        keep.append(tokenized_prefix(self.train_file.storage_name))
        ctx.cache.trim(keep)
        # Fetched again rather than compared by size: a file left here by an attempt whose push never finished
        # can have the size of the stored one of another attempt (the same step, other weights).
        shutil.rmtree(ctx.files.checkpoints, ignore_errors=True)
        ctx.cache.pull(ctx.files.key_of(ctx.files.checkpoints))

    def load_data(self) -> None:
        """The training rows as token arrays (tokenized once per file and tokenizer, kept in the store) and the
        evaluation rows as records: the validation rows (the validation file, or a seeded split of the training
        file) and the test rows (the test file, or a seeded split carved off the training file first)."""
        from worker.child.job_data import file_copy, load_tokens, split_rows
        from worker.evaluation.evaluate import EvalSet
        from worker.training.data import Formatter
        from worker.training.modeling import ModelRefused, load_tokenizer, pick_device
        from worker.training.tokenized import TrainingExamples, pairs_of

        ctx, spec, ev_spec, clock = self.ctx, self.spec, self.spec.evaluation, self.clock
        clock.lap("imports")
        ctx.progress({"phase": "loading_data"}, force=True)
        train_path = file_copy(ctx.cache, self.train_file)
        clock.lap("file")
        self.device = pick_device()
        clock.lap("device")
        try:
            self.tokenizer = load_tokenizer(self.job.model_source)  # checks the model directory before reading
        except ModelRefused as exc:
            raise UserError(exc.code, str(exc)) from exc
        clock.lap("tokenizer")
        fmt = Formatter(self.tokenizer, spec.training.max_seq_length)
        pref = spec.preference
        tokens, how = load_tokens(
            ctx.cache,
            train_path,
            self.train_file,
            fmt,
            pref,
            self.job.model,
            on_progress=lambda rows: ctx.progress({"phase": "loading_data"}),  # a cancel is seen meanwhile
        )
        ctx.event(how)
        clock.lap("tokens")
        files = (self.train_file, self.val_file, self.test_file)
        train_rows, val_rows, test_rows = split_rows(ctx.cache, fmt, spec, self.job, files, train_path, tokens.num_rows)
        if not len(train_rows) or not val_rows:
            held = "validation and test rows are" if test_rows else "one is"
            raise UserError(
                "too_few_rows", f"training file {self.train_file.id} needs at least 2 rows ({held} held out)"
            )
        cut, dropped = tokens.counts(train_rows)
        trainable = tokens.trainable(train_rows)
        self.train_examples = pairs_of(tokens, trainable) if pref else TrainingExamples(tokens, trainable)
        if not self.train_examples:
            raise UserError(
                "no_trainable_tokens",
                f"no row has an answer that fits max_seq_length ({spec.training.max_seq_length} tokens): "
                f"{dropped} of {len(train_rows)} rows dropped",
            )
        self.eval_set = EvalSet.build(fmt, [record for _, record in val_rows], pref)
        self.test_set = EvalSet.build(fmt, [record for _, record in test_rows], pref) if test_rows else None
        summary = {
            "training_rows": len(train_rows),
            "validation_rows": len(self.eval_set.rows),
            "test_rows": len(test_rows),
            "rows_cut": cut,
            "rows_dropped": dropped,
        }
        ctx.update(data_summary=summary)
        if cut or dropped:
            ctx.event(
                f"max_seq_length {spec.training.max_seq_length}: {cut} training rows lost the beginning of their "
                f"prompt, {dropped} were dropped (their answer alone is longer)",
                level="warning",
                data=summary,
            )
        # The shipped checkpoint is picked by the selection metric; checkpoint evaluations measure every
        # requested metric and whatever the selection metric needs.
        self.selection = selection_for(ev_spec.model_dump(), bool(self.eval_set.gen_rows), pref)
        self.ckpt_metrics = sorted(set(ev_spec.metrics) | metrics_for_selection(self.selection))
        tested = f", {len(test_rows)} test rows" if test_rows else ""
        ctx.event(
            f"Data: {len(self.train_examples)} training {'pairs' if pref else 'rows'}, {len(self.eval_set.rows)} "
            f"validation rows{tested} ({self.train_file.shape}); device {self.device}"
        )
        clock.lap("rows")

    def load_model(self) -> None:
        import torch

        from worker.evaluation.metrics import get_bertscorer, resolve_bertscore_model
        from worker.training.auto_plan import choose_adapter_type
        from worker.training.modeling import ModelRefused, count_params_of_config, load_base_model

        ctx, job, ranks = self.ctx, self.job, self.ranks
        ctx.progress({"phase": "loading_model"}, force=True)
        if self.spec.adapter.type == "auto":
            kind, why = choose_adapter_type(count_params_of_config(job.model_source), self.device)
            kind, why = self.ranks.decide((kind, why))  # one model on every rank, the main rank's choice
            adapter = self.spec.adapter.model_copy(update={"type": kind})
            self.spec = self.spec.model_copy(update={"adapter": adapter})
            ctx.update(spec=self.spec.stored())  # a resumed attempt reads the choice back instead of choosing again
            ctx.event(f"adapter auto: {kind} ({why})")
        if ranks.parallel:
            self.choose_strategy()
        # A model to shard is read into host memory first, each rank then keeping its shard on its GPU; a 4-bit one
        # fits a GPU whole and is quantized there, as bitsandbytes does it.
        place = torch.device("cpu") if self.sharded and self.spec.adapter.type != "qlora" else None
        max_full = self.settings.full_finetune_max_params * (ranks.world if self.sharded else 1)
        try:
            self.model = load_base_model(
                job.model_source, self.spec.adapter, self.device, max_full, place=place, sharded=self.sharded
            )
        except ModelRefused as exc:
            raise UserError(exc.code, str(exc)) from exc
        self.bertscorer = None
        if "bertscore" in self.ckpt_metrics and self.eval_set.gen_rows:
            name, layers = resolve_bertscore_model(self.settings.bertscore_model, self.settings.bertscore_num_layers)
            self.bertscorer = get_bertscorer(name, layers, str(self.device))

    def choose_strategy(self) -> None:
        """A job on several GPUs: the whole model on every rank (ddp) or sharded over them (fsdp), as the job asks or,
        for `auto`, as the main rank finds the model fits its GPU."""
        from worker.training.auto_plan import choose_strategy
        from worker.training.modeling import count_params_of_config

        ctx, resources = self.ctx, self.spec.resources
        strategy, why = resources.strategy, "as the job asks"
        if strategy == "auto":
            params = count_params_of_config(self.job.model_source) if self.ranks.main else 0
            cap = self.settings.full_finetune_max_params
            strategy, why = choose_strategy(params, self.spec.adapter.type, self.device, self.spec.preference, cap)
            strategy, why = self.ranks.decide((strategy, why))
            self.spec = self.spec.model_copy(update={"resources": resources.model_copy(update={"strategy": strategy})})
            ctx.update(spec=self.spec.stored())
        self.sharded = strategy == "fsdp"
        ctx.event(f"{self.ranks.world} ranks, {strategy}: {why}")

    def evaluate_base(self, adapter_off: bool = False) -> None:
        """The base model on the validation and test rows: before training, or after it with the adapter switched
        off (peft's disable_adapter; the fused LoRA layers honour it), which computes exactly the base."""
        if {split for split, _ in self.splits()} <= self.base_splits:  # a resumed attempt keeps what it measured
            return
        self.ctx.progress({"phase": "evaluating_base"}, force=True)
        metrics = self.spec.evaluation.metrics
        with self.model.disable_adapter() if adapter_off else nullcontext():
            results = {split: self.evaluate_model(metrics, True, rows) for split, rows in self.splits()}
        store_base_eval(self.ctx, results, dict(self.splits()))
        self.ctx.event("Base model evaluated", type="metrics", data=event_data("base", results))

    def prepare_training(self) -> None:
        """The adapter (or the full model) made trainable, and the micro-batch sized when it is `auto`."""
        from worker.training.auto_plan import choose_micro_batch, with_micro_batch
        from worker.training.loop import packs
        from worker.training.modeling import count_params, wrap_for_training
        from worker.training.sharding import shard

        ctx, spec = self.ctx, self.spec
        self.model = wrap_for_training(
            self.model,
            spec.adapter,
            self.job.model_source,
            spec.training.gradient_checkpointing,
            self.tokenizer.eos_token_id,
            on_gpu=self.device.type == "cuda",
        )
        self.params = count_params(self.model)
        # by name, as trained: what is packaged (requires_grad can change after training, as peft disables and loads);
        # a tied weight once, by its first name, as saving the whole model keeps it
        self.trained_names = {n for n, p in self.model.named_parameters() if p.requires_grad}
        # the replicas start from the main rank's initialisation (peft draws LoRA's A from torch's generator); a full
        # fine-tune's weights are the files' on every rank
        if not (self.sharded and spec.adapter.type == "full"):
            self.ranks.copy_from_main([p for p in self.model.parameters() if p.requires_grad])
        if self.sharded:
            shard(self.model, self.ranks, self.device)
        ctx.update(trainable_params=self.params[0], total_params=self.params[1])
        if spec.training.micro_batch_size == "auto":
            if spec.preference:
                lengths = [len(s.input_ids) for p in self.train_examples for s in (p.chosen, p.rejected)]
            else:
                lengths = self.train_examples.lengths()
            micro, why = choose_micro_batch(
                self.model,
                lengths,
                spec.training.max_seq_length,
                packs(spec),
                self.params[0] // (self.ranks.world if self.sharded else 1),  # a rank's share of the optimizer
                self.device,
            )
            if spec.preference:  # a pair is two sequences
                micro = max(1, micro // 2)
                why += f", {micro} pairs"
            micro, why = self.ranks.decide((micro, why))  # the main rank's measure, on every rank
            self.spec = with_micro_batch(spec, micro)
            ctx.update(spec=self.spec.stored())
            ctx.event(f"micro_batch_size auto: {why}")
        ctx.event(f"{self.spec.adapter.type}: {self.params[0]:,} trainable parameters of {self.params[1]:,}")
        if self.spec.preference:
            self.attach_reference()

    def attach_reference(self) -> None:
        """Preference tuning: the frozen base's log-probabilities of every training and held-out pair's answers,
        measured with the adapter disabled before the first step (this attempt has not loaded its checkpoint yet,
        so a full fine-tune is still the base too), or read back from an earlier attempt."""
        import time

        from worker.training.preference import attach_reference

        ctx = self.ctx
        ctx.progress({"phase": "reference"}, force=True)
        pairs = self.train_examples + [p for _, rows in self.splits() for p in rows.pairs]
        t = time.monotonic()
        micro = self.spec.training.micro_batch_size

        def attach() -> bool:
            return attach_reference(
                self.model, pairs, self.tokenizer.pad_token_id, self.device, micro, ctx.files.checkpoints
            )

        # measured (and stored beside the checkpoints) by the main rank; the other ranks read them back
        measured = attach() if self.ranks.main else False
        self.ranks.wait_for_main()
        if not self.ranks.main:
            attach()
        how = f"measured in {time.monotonic() - t:.1f}s" if measured else "read back from an earlier attempt"
        ctx.event(f"Reference log-probabilities of {len(pairs)} pairs (the base, adapter disabled): {how}")

    def train(self):
        """The training loop, resumed from the job's last checkpoint; returns its TrainSummary."""
        from worker.child.checkpoint_upload import CheckpointUploader
        from worker.training.checkpoints import checkpoint_step, latest_checkpoint, load_trainable_weights
        from worker.training.distributed import leave
        from worker.training.loop import Hooks, TrainConfig, TrainingInterrupted, train

        ctx, selection = self.ctx, self.selection
        uploader = CheckpointUploader(ctx.cache, ctx.files.checkpoints)

        def record_stored() -> None:
            for args in uploader.take_stored():
                record_checkpoint(ctx, *args)

        def on_checkpoint(step: int, epoch: float, path, metrics: dict, evaluated: bool) -> None:
            uploader.submit(path, step, (step, epoch, path, metrics, evaluated))
            record_stored()  # the previous checkpoint's row: submit waited for its push

        first_step = [True]

        def on_progress(values: dict, force: bool = False) -> None:
            record_stored()
            ctx.progress(values, force)
            if first_step[0] and "train_loss" in values:  # this attempt's first optimizer step is done
                first_step[0] = False
                message, data = self.clock.first_step()
                ctx.event(message, data=data)

        hooks = Hooks(
            on_progress=on_progress,
            on_log=lambda d: ctx.event(f"Step {d['step']}: train_loss {d['train_loss']:.4f}", type="metrics", data=d),
            on_checkpoint=on_checkpoint,
            on_evaluate=self.evaluate_checkpoint,
            should_stop=ctx.should_stop,
            interrupt_requested=lambda: ctx.interrupt_requested,
        )
        cfg = TrainConfig.from_spec(self.spec, self.job.seed, self.settings.checkpoint_every_s)
        objective = None
        if self.spec.preference:
            from worker.training.preference import PreferenceObjective

            beta = self.spec.hyperparameters.beta
            objective = PreferenceObjective(beta, self.tokenizer.pad_token_id, self.device, cfg.pack_length)
        if cfg.early_stopping_patience and selection is None:
            ctx.event("early_stopping_patience is ignored: selection_metric 'last' has no metric to stop on")
        ckpt_root = ctx.files.checkpoints
        resume = latest_checkpoint(ckpt_root)
        if resume is not None:
            ctx.event(f"Resuming from the checkpoint of step {checkpoint_step(resume)}")
        ctx.in_training = True
        try:
            summary = train(
                self.model,
                self.train_examples,
                cfg,
                self.tokenizer.pad_token_id,
                self.device,
                ckpt_root,
                hooks,
                selection,
                objective,
                self.ranks,
            )
            if self.ranks.parallel and not self.sharded:  # the last collective is behind every rank
                leave()
                self.followers_left = True
        except TrainingInterrupted as exc:
            uploader.wait()  # the checkpoint it stopped at is the one the next attempt, on any host, resumes from
            record_stored()
            raise Interrupted(str(exc)) from exc
        except BaseException:
            with suppress(Exception):  # the error that stopped training is the one to report
                uploader.wait()
            raise
        finally:
            ctx.in_training = False
        uploader.wait()
        record_stored()
        # asked during the last step: its checkpoint is saved, the rest can wait (the main rank's signal, for every rank
        # of a sharded model, which evaluates and packages together)
        interrupted = ctx.interrupt_requested
        if self.sharded:
            interrupted = self.ranks.decide(interrupted if self.ranks.main else None)
        if interrupted:
            raise Interrupted("training finished; evaluation and packaging are left to the next attempt")
        if summary.stopped_early is not None:
            ctx.event(
                f"Stopped early at step {summary.stopped_early} of {summary.total_steps}: "
                f"{cfg.early_stopping_patience} evaluations in a row without a better {selection[0]}"
            )
        ctx.event(
            f"Training done: {summary.steps} steps in {summary.seconds:.1f}s"
            + (f" (resumed at step {summary.resumed_from})" if summary.resumed_from else "")
        )
        # The final step is always evaluated, so its weights are on disk like the best one's.
        self.ship_step = summary.best_step if summary.best_step is not None else summary.steps
        load_trainable_weights(ckpt_root / f"step-{self.ship_step}", self.model)
        if self.ship_step != summary.steps:
            ctx.event(
                f"Shipping the checkpoint of step {self.ship_step}: best {selection[0]} "
                f"{summary.best_value:.4f} of the evaluated checkpoints"
            )
        return summary

    def evaluate_tuned(self, summary):
        """The shipped weights on the validation rows and, for the first time in the job, on the test rows."""
        self.ctx.progress({"phase": "evaluating"}, force=True)
        wanted = self.spec.evaluation.metrics
        # The shipped checkpoint was evaluated during training on the same rows with the same weights: reuse
        # that result when this attempt made it with exactly the requested metrics; measure again otherwise.
        tuned = self.evaluations.get(self.ship_step) if set(self.ckpt_metrics) == set(wanted) else None
        if tuned is None:
            tuned = self.evaluate_model(wanted)
        results = {"validation": tuned}
        if self.test_set is not None:
            results["test"] = self.tuned_test = self.evaluate_model(wanted, eval_set=self.test_set)
        store_tuned_eval(self.ctx, results, dict(self.splits()))
        self.ctx.event("Fine-tuned model evaluated", type="metrics", data=event_data("tuned", results))
        return tuned

    def splits(self) -> list[tuple[str, object]]:
        """(split, EvalSet) of the rows evaluated: validation, and test where the job has test rows."""
        return [("validation", self.eval_set)] + ([("test", self.test_set)] if self.test_set is not None else [])

    def package(self, summary, tuned) -> None:
        """The shipped adapter's folder and archive, an archive per evaluated checkpoint, and the job's end."""
        from worker.evaluation.artifacts import package_adapter
        from worker.training.modeling import peak_memory_bytes

        ctx, files = self.ctx, self.ctx.files
        ctx.progress({"phase": "packaging"}, force=True)
        name = fine_tuned_name(self.job)
        weights = self.whole_weights()
        if not self.ranks.main:  # a sharded model's followers: their part of every gather, nothing written
            self.package_checkpoints(name)
            return
        with ctx.Session() as s:
            base = {
                e.split: e.metrics
                for e in s.scalars(
                    select(Evaluation).where(Evaluation.job_id == self.job.id, Evaluation.subject == "base")
                )
            }
        self.base_metrics = base.get("validation")
        tuned_test = self.tuned_test
        self.test_metrics = (base.get("test"), tuned_test.metrics) if tuned_test is not None else None
        archive, digest, size = package_adapter(
            self.model,
            self.tokenizer,
            files.adapter_dir,
            files.adapter_archive,
            self.card(name, tuned.metrics),
            base_model=public_model_name(self.job.model_source),
            state_dict=weights,
        )
        ctx.cache.push_folder(files.adapter_dir)  # comparisons load the folder, downloads the archive
        ctx.cache.drop_stored_extras(files.adapter_dir)  # what an earlier attempt's folder held and this one lacks
        ctx.cache.push(archive)
        self.package_checkpoints(name)
        ok = ctx.finish(
            JobStatus.succeeded,
            fine_tuned_model=name,
            phase="done",
            trained_tokens=summary.trained_tokens,
            train_seconds=summary.train_seconds,
            peak_memory_bytes=max(summary.peak_memory_bytes, peak_memory_bytes(self.device)),
            adapter_name=files.relative(archive),
            adapter_sha256=digest,
            adapter_bytes=size,
            step=summary.steps,
            epoch=summary.epoch,
        )
        if not ok:
            raise LostJob

    # ------------------------------------------------------------------------------------------- helpers

    def evaluate_model(self, metrics: list[str], is_reference: bool = False, eval_set=None):
        """The model as it is now (base, checkpoint, tuned) on the validation rows, or on `eval_set`; is_reference:
        the base, which is preference tuning's reference."""
        from worker.evaluation.evaluate import evaluate

        rows = eval_set if eval_set is not None else self.eval_set
        return evaluate(
            self.model,
            self.tokenizer,
            loss_examples=rows.loss_examples,
            gen_rows=rows.gen_rows,
            spec=self.spec.evaluation.model_copy(update={"metrics": metrics}),
            device=self.device,
            bertscorer=self.bertscorer,
            pairs=rows.pairs,
            beta=self.spec.hyperparameters.beta,
            reference_is_model=is_reference,
            gen_records=rows.gen_records(),
        )

    def evaluate_checkpoint(self, step: int, epoch: float) -> dict:
        result = self.evaluations[step] = self.evaluate_model(self.ckpt_metrics)
        shown = (
            "preference_accuracy",
            "reward_margin",
            "eval_loss",
            "rougeL",
            "bertscore_f1",
            self.selection[0] if self.selection else "eval_loss",
        )
        self.ctx.event(
            f"Step {step} (epoch {epoch:.2f}) evaluated: "
            + ", ".join(f"{k} {result.metrics[k]:.4f}" for k in dict.fromkeys(shown) if k in result.metrics),
            type="metrics",
            data={"step": step, "epoch": round(epoch, 4), **result.metrics},
        )
        return result.metrics

    def whole_weights(self) -> dict | None:
        """A sharded model's trained weights gathered whole, by the names of its state_dict, for saving: every rank
        takes part, the main rank gets them. None where the model is not sharded: it is saved from itself."""
        if not self.sharded:
            return None
        from worker.training.sharding import gathered, reshard

        reshard(self.model)  # the shards are the weights, not what an evaluation left gathered
        return gathered({k: v for k, v in self.model.state_dict().items() if k in self.trained_names}, self.ranks.main)

    def card(self, name: str, metrics: dict, step: int | None = None) -> str:
        from worker.evaluation.model_card import card_facts, model_card

        test = self.test_metrics if step is None else None  # only the shipped model is measured on the test rows
        return model_card(
            card_facts(self.job, name), self.spec, self.base_metrics, metrics, self.params, step=step, test=test
        )

    def package_checkpoints(self, name: str) -> None:
        """An archive for every evaluated checkpoint whose weights are on disk, for GET .../adapter?step=N.
        Loads each checkpoint's weights into the model: called after the shipped model is packaged."""
        from worker.evaluation.artifacts import package_adapter
        from worker.training.checkpoints import load_trainable_weights, weights_file

        ctx, files = self.ctx, self.ctx.files
        todo = []
        if self.ranks.main:
            with ctx.Session() as s:
                rows = s.execute(
                    select(Checkpoint.step, Checkpoint.dir_name, Checkpoint.metrics, Checkpoint.adapter_name)
                    .where(Checkpoint.job_id == ctx.job_id, Checkpoint.evaluated.is_(True))
                    .order_by(Checkpoint.step)
                ).all()
            for step, dir_name, metrics, done in rows:
                if done and ctx.cache.store.size(files.key(done)) is not None:  # packaged by an earlier attempt
                    continue
                if weights_file(files.resolve(dir_name)) is not None:
                    todo.append((step, dir_name, metrics))
        if self.sharded:  # every rank loads and gathers each of them
            todo = self.ranks.decide(todo)
        out_dir = files.checkpoint_archives
        for step, dir_name, metrics in todo:
            load_trainable_weights(files.resolve(dir_name), self.model)
            weights = self.whole_weights()
            if not self.ranks.main:
                continue
            metrics = {k: v for k, v in (metrics or {}).items() if k != "train_loss"}
            archive, digest, size = package_adapter(
                self.model,
                self.tokenizer,
                out_dir / f".step-{step}",
                out_dir / f"step-{step}.tar.gz",
                self.card(name, metrics, step=step),
                base_model=public_model_name(self.job.model_source),
                keep_folder=False,
                state_dict=weights,
            )
            ctx.cache.push(archive)
            archive.unlink()  # nothing on this host reads it again; downloads come from the store
            record_checkpoint_archive(ctx, step, archive, digest, size)


def event_data(subject: str, results: dict) -> dict:
    """A metrics event's data: the validation metrics as they always were, and the test metrics under "test"."""
    data = {"subject": subject, **results["validation"].metrics}
    if "test" in results:
        data["test"] = results["test"].metrics
    return data


def run(ctx: JobContext) -> None:
    """One attempt in this process alone (tests call it directly)."""
    TrainingRecipe(ctx).run()


def main(argv: list[str]) -> int:
    """`python -m worker.child train JOB_ID ATTEMPT` (see worker/child/__main__.py); returns the exit code the
    training task reads."""
    set_up_logging(get_settings(), "child")
    job_id, attempt = argv[0], int(argv[1])
    prepare_process(get_settings())
    from worker.training.distributed import join_from_environment

    # torchrun's ranks of a job on several GPUs (one process: rank 0 of 1): the main rank alone writes
    ranks = join_from_environment(timeout_s=get_settings().rank_wait_s)
    ctx = JobContext(job_id, attempt) if ranks.main else FollowerContext(job_id, attempt)
    signal.signal(signal.SIGTERM, ctx.on_sigterm)
    log.info("job %s attempt %s: training child started (rank %s of %s)", job_id, attempt, ranks.rank, ranks.world)
    recipe = TrainingRecipe(ctx, ranks)
    code = run_attempt(ctx, recipe, attempt)
    if not ranks.parallel:
        return code
    # torchrun answers 1 for any failure: each rank leaves its own code for the training task
    exit_file = ctx.files.rank_exit(attempt, ranks.rank)
    exit_file.with_suffix(".tmp").write_text(str(code))
    exit_file.with_suffix(".tmp").replace(exit_file)  # whole or absent, even if torchrun kills this rank now
    if ranks.main:  # ended before the others were done: a failure to torchrun, which stops them
        return code if recipe.followers_left else code or EXIT_CRASH
    # another rank stopping at a checkpoint is no failure to torchrun, which would kill the main rank while it
    # still saves; a crash is, so that torchrun stops the others
    return EXIT_DONE if code in (EXIT_DONE, EXIT_INTERRUPTED) else code


def run_attempt(ctx: JobContext, recipe: TrainingRecipe, attempt: int) -> int:
    """The recipe run to its end; returns the exit code."""
    job_id = ctx.job_id
    try:
        recipe.run()
        log.info("job %s attempt %s: training child done", job_id, attempt)
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

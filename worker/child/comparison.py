"""Qualitative comparison, the child side: the base model and each chosen job generate on the same prompts.

The Celery task (worker/tasks/comparisons.py) claims the comparison row and runs `python -m worker.child
compare ID`: CUDA lives only in the child, as for training. The child loads each distinct base model once
(4-bit for QLoRA jobs, unquantized otherwise), generates greedily with it, then applies each job's adapter
from the job's adapter folder (app.core.storage.JobFiles.adapter_dir, fetched from the store), generates, and
removes the adapter again before the next job. A full fine-tune's folder holds a whole model, which is loaded on
its own.
Prompts are formatted as the job's training formatted them. The child writes the results, or `failed` with
{code, message}.

Stored `results` (the API turns it into one entry per prompt):
    {"source": "prompts" | "held_out_rows", "held_out_job_id": str | None, "references": [str] | None,
     "base": [{"model", "quantized", "outputs": [str]}],
     "jobs": [{"job_id", "model", "fine_tuned_model", "adapter_type", "outputs": [str]}],
     "device": str, "seconds": float}
"""

from __future__ import annotations

import gc
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from app.core.db import get_sessionmaker
from app.core.errors import error_body
from app.core.job_spec import AdapterSpec, JobSpec
from app.core.job_state import claim_comparison, finish_comparison
from app.core.local_cache import LocalCache
from app.core.settings import get_settings
from app.core.storage import JobFiles
from app.core.tables import Comparison, ComparisonStatus, File, Job
from app.datasets.records import format_instruction
from worker.child.process import prepare_process, prepare_torch, set_up_logging

log = logging.getLogger("ftaas.compare")

CHAT_SHAPES = frozenset({"chat", "messages"})
FULL = "full"


class ComparisonError(Exception):
    """A problem with the comparison's inputs; reported as the comparison's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class JobInfo:
    """What the generation needs of one job, read from the database before any model is loaded."""

    job_id: str
    model: str  # as the client named it
    model_source: str
    adapter: AdapterSpec
    shape: str  # the training file's shape: chat, prompt_completion, instruction, text
    max_seq_length: int
    batch_size: int | str  # the job's evaluation.batch_size: rows or "auto" (worker.evaluation.generation sizes it)
    fine_tuned_model: str | None
    folder: Path

    @property
    def adapter_type(self) -> str:
        return self.adapter.type

    @property
    def base_key(self) -> tuple[str, str | None]:
        """One base load per (model, quantization): QLoRA jobs get the 4-bit base they were trained on."""
        return self.model_source, self.adapter.compute_dtype if self.adapter_type == "qlora" else None


# ---------------------------------------------------------------- database side (no torch)


def load_job_infos(session, job_ids: list[str]) -> list[JobInfo]:
    cache = LocalCache.from_settings()  # each job's adapter folder, fetched from the store to this host
    infos = []
    for job_id in job_ids:
        job = session.get(Job, job_id)
        if job is None:
            raise ComparisonError("job_not_found", f"job {job_id} no longer exists")
        shape = session.get(File, job.training_file_id).shape
        spec = JobSpec.of(job.spec)
        infos.append(
            JobInfo(
                job_id=job.id,
                model=job.model,
                model_source=job.model_source,
                adapter=spec.adapter,
                shape=shape,
                max_seq_length=spec.training.max_seq_length,
                batch_size=spec.evaluation.batch_size,
                fine_tuned_model=job.fine_tuned_model,
                folder=cache.pull(cache.key_of(JobFiles(job.id).adapter_dir)),
            )
        )
    return infos


def run_comparison(comparison_id: str) -> str:
    """Run one comparison in this process and store its outcome. Returns the final status (or "skipped").

    The Celery task claims the row first and runs this in a child; called directly on a queued row (tests,
    a manual run), it claims the row itself."""
    Session = get_sessionmaker()
    with Session() as s:
        row = s.get(Comparison, comparison_id)
        if row is None or row.status not in (ComparisonStatus.queued, ComparisonStatus.running):
            log.info("comparison %s is missing or finished; nothing to do", comparison_id)
            return "skipped"
        if row.status == ComparisonStatus.queued and not claim_comparison(s, comparison_id):
            return "skipped"
        prompts, max_new_tokens = list(row.prompts), row.max_new_tokens
        stored = dict(row.results or {})
        try:
            infos = load_job_infos(s, list(row.job_ids))
        except ComparisonError as exc:
            finish_comparison(s, comparison_id, ComparisonStatus.failed, error=error_body(exc.code, str(exc)))
            return ComparisonStatus.failed
    started = time.monotonic()
    try:
        outputs = generate_outputs(infos, prompts, max_new_tokens, preformatted=stored.get("source") == "held_out_rows")
    except ComparisonError as exc:
        log.warning("comparison %s failed: %s", comparison_id, exc)
        with Session() as s:
            finish_comparison(s, comparison_id, ComparisonStatus.failed, error=error_body(exc.code, str(exc)))
        return ComparisonStatus.failed
    except Exception as exc:  # noqa: BLE001 - any failure ends the comparison, with its reason
        traceback.print_exc()
        with Session() as s:
            finish_comparison(
                s,
                comparison_id,
                ComparisonStatus.failed,
                error=error_body("comparison_failed", f"{type(exc).__name__}: {exc}"),
            )
        return ComparisonStatus.failed
    results = {
        "source": stored.get("source", "prompts"),
        "held_out_job_id": stored.get("held_out_job_id"),
        "references": stored.get("references"),
        **outputs,
        "seconds": round(time.monotonic() - started, 3),
    }
    with Session() as s:
        ok = finish_comparison(s, comparison_id, ComparisonStatus.succeeded, results=results)
    return ComparisonStatus.succeeded if ok else "skipped"


# ---------------------------------------------------------------- generation (torch, in the child only)


def generation_rows(formatter, shape: str, prompts: list[str], *, preformatted: bool) -> list:
    """The prompts as the job's training formatted them, through the same Formatter as its evaluation.

    Held-out rows are already formatted (they are the evaluation's own prompt text): they go in verbatim,
    which gives exactly the token ids the job's evaluation generated from."""
    rows = []
    for prompt in prompts:
        if preformatted or shape not in CHAT_SHAPES | {"instruction"}:
            record = {"prompt": prompt, "completion": ""}  # prompt/completion; raw text continues the prompt
        elif shape == "instruction":
            record = {"prompt": format_instruction(prompt), "completion": ""}
        else:
            record = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]}
        rows.append(formatter.generation_row(record))
    return rows


def _adapter_left_in(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import AuxiliaryTrainingWrapper

    return any(isinstance(m, BaseTunerLayer | AuxiliaryTrainingWrapper) for m in model.modules())


def _remove_adapter(peft_model):
    """The base model without the adapter, or None when it cannot be restored cleanly (reload it then)."""
    if getattr(peft_model.active_peft_config, "is_prompt_learning", False):
        return peft_model.get_base_model()  # prompt tuning leaves the base model's modules untouched
    base = peft_model.unload()
    if _adapter_left_in(base):
        return None
    if hasattr(base, "peft_config"):
        del base.peft_config
    return base


def _release(device) -> None:
    gc.collect()
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _load_full_model(folder: Path, device):
    from transformers import AutoModelForCausalLM

    from worker.training.modeling import check_model_source, train_dtype

    check_model_source(str(folder))
    model = AutoModelForCausalLM.from_pretrained(
        str(folder),
        dtype=train_dtype(device, FULL),  # as the full fine-tune trained and was evaluated
        device_map={"": device.index if device.type == "cuda" and device.index is not None else str(device)},
        use_safetensors=True,
        trust_remote_code=False,
    )
    model.eval()
    return model


def generate_outputs(infos: list[JobInfo], prompts: list[str], max_new_tokens: int, *, preformatted: bool) -> dict:
    """Greedy outputs of each distinct base model and of each job, in the order of `infos`."""
    from peft import PeftModel

    from worker.evaluation.generation import generate, generation_batch_size
    from worker.training.data import Formatter
    from worker.training.modeling import (
        ModelRefused,
        check_adapter_source,
        load_base_model,
        load_tokenizer,
        pick_device,
    )

    def gen_batch(info: JobInfo) -> int:
        return generation_batch_size(info.batch_size, device)

    for info in infos:
        if not (info.folder / ("config.json" if info.adapter_type == FULL else "adapter_config.json")).is_file():
            raise ComparisonError("adapter_missing", f"the adapter of job {info.job_id} is missing from storage")

    device = pick_device()
    groups: dict[tuple[str, str | None], list[JobInfo]] = {}
    for info in infos:
        groups.setdefault(info.base_key, []).append(info)

    base_outputs, job_outputs = [], {}
    for group in groups.values():
        first = group[0]
        tokenizer = load_tokenizer(first.model_source)

        def rows_for(info: JobInfo, tokenizer=tokenizer) -> list:
            return generation_rows(
                Formatter(tokenizer, info.max_seq_length), info.shape, prompts, preformatted=preformatted
            )

        def load_base(first=first):
            # 4-bit for a QLoRA group; otherwise the plain base in the adapters' dtype (a full fine-tune's
            # own model is loaded separately).
            spec = first.adapter if first.base_key[1] is not None else first.adapter.model_copy(update={"type": "lora"})
            try:
                model = load_base_model(first.model_source, spec, device)
            except ModelRefused as exc:
                raise ComparisonError(getattr(exc, "code", "model_refused"), str(exc)) from exc
            model.eval()
            return model

        base = load_base()
        # The base sees the prompts as the group's first job formats them.
        texts = generate(base, tokenizer, rows_for(first), max_new_tokens, gen_batch(first), device)
        base_outputs.append({"model": first.model, "quantized": first.base_key[1] is not None, "outputs": texts})
        for info in group:
            rows = rows_for(info)
            if info.adapter_type == FULL:
                model = _load_full_model(info.folder, device)
                job_outputs[info.job_id] = generate(model, tokenizer, rows, max_new_tokens, gen_batch(info), device)
                del model
                _release(device)
                continue
            if base is None:
                base = load_base()
            check_adapter_source(info.folder)
            tuned = PeftModel.from_pretrained(base, str(info.folder))
            tuned.eval()
            job_outputs[info.job_id] = generate(tuned, tokenizer, rows, max_new_tokens, gen_batch(info), device)
            base = _remove_adapter(tuned)
            del tuned
            if base is None:
                _release(device)
        del base
        _release(device)

    return {
        "base": base_outputs,
        "jobs": [
            {
                "job_id": info.job_id,
                "model": info.model,
                "fine_tuned_model": info.fine_tuned_model,
                "adapter_type": info.adapter_type,
                "outputs": job_outputs[info.job_id],
            }
            for info in infos
        ],
        "device": str(device),
    }


# ---------------------------------------------------------------- child entry point


def main(argv: list[str]) -> int:
    """`python -m worker.child compare COMPARISON_ID` (see worker/child/__main__.py)."""
    settings = get_settings()
    set_up_logging(settings, "compare")
    prepare_process(settings)
    prepare_torch(settings)
    run_comparison(argv[0])
    return 0

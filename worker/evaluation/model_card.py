"""The model card (README.md) of every downloadable archive: a Hugging Face model card built with huggingface_hub,
so the Hub, `ModelCard.load` and the tools that read card metadata understand it where the archive goes.

Its YAML names the base model by its public name (never a server path), the library that loads the folder (peft
for an adapter, transformers for a whole model), tags, the metric families measured, and the tuned model's
evaluation as a model-index. No `datasets`: that key holds Hub dataset ids, and a job trains on an ftaas file,
named in the text instead. The body says how to load it, compares base and tuned on the same rows, and lists the
training settings.
"""

from __future__ import annotations

import json
import math

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from app.core.job_spec import JobSpec
from app.core.metrics import METRIC_NAMES
from app.core.settings import public_model_name

TASK = "text-generation"


def card_facts(job, fine_tuned_model: str) -> dict:
    """What a card says of a job (a Job row): its base model by the public name, never the worker's path."""
    return {
        "id": job.id,
        "model": public_model_name(job.model_source),
        "fine_tuned_model": fine_tuned_model,
        "seed": job.seed,
        "training_file": job.training_file_id,
        "validation_file": job.validation_file_id,
        "test_file": job.test_file_id,
    }


def model_card(
    job: dict,
    spec: JobSpec | dict,
    base: dict | None,
    tuned: dict | None,
    params: tuple[int, int],
    step: int | None = None,
    merged: bool = False,
    test: tuple[dict | None, dict | None] | None = None,
) -> str:
    """The archive's README.md.

    job: `id`, `model` (the base's public name), `fine_tuned_model`, `seed`, and optionally `training_file`,
    `validation_file` and `test_file` (ids); see card_facts. `step`: the card of one evaluated checkpoint, `tuned`
    being its metrics. `merged`: the card of the base with the adapter merged in (GET .../adapter?format=merged).
    `test`: (base, tuned) metrics on the test rows, which no decision saw (the shipped model only).
    """
    spec = JobSpec.of(spec)
    kind = spec.adapter.type
    whole = kind == "full" or merged  # a whole model: transformers loads it, no peft
    data = ModelCardData(
        base_model=job["model"],
        # the Hub's own word for how this model derives from its base
        base_model_relation="finetune" if whole else "adapter",
        library_name="transformers" if whole else "peft",
        pipeline_tag=TASK,
        tags=["ftaas", kind] + (["dpo"] if spec.preference else []) + (["merged"] if merged else []),
        metrics=_families_measured(spec, tuned),
        model_name=job["fine_tuned_model"],
        eval_results=(_eval_results(job, tuned) + _eval_results(job, (test or (None, None))[1], test=True)) or None,
    )
    body = _body(job, spec, base, tuned, params, step, merged) + _test_section(test)
    # Parsed back before it is written: a card that ModelCard cannot load never reaches an archive.
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def _test_section(test: tuple[dict | None, dict | None] | None) -> str:
    if not test or not any(test):
        return ""
    base, tuned = test
    lines = [
        "## Test rows (no decision saw them: the shipped checkpoint was chosen on the rows above)",
        "| metric | base | tuned |",
        "| --- | --- | --- |",
    ]
    for key in METRIC_NAMES:
        b, t = (base or {}).get(key), (tuned or {}).get(key)
        if b is not None or t is not None:
            lines.append(f"| {key} | {_fmt(b)} | {_fmt(t)} |")
    return "\n".join(lines) + "\n"


def _families_measured(spec: JobSpec, tuned: dict | None) -> list[str]:
    """The job's metric families that gave a value (raw text has no ROUGE). Each stored metric is named after
    its family (rouge1, bertscore_f1, perplexity, token_accuracy: app/core/metrics.py)."""
    if not tuned:
        return list(spec.evaluation.metrics) + spec.evaluation.grader_names()
    families = [f for f in spec.evaluation.metrics if any(name.startswith(f) for name in tuned)]
    return families + [g for g in spec.evaluation.grader_names() if g in tuned]


def _evaluated_on(job: dict) -> tuple[str, str, str]:
    """(dataset id, readable name, split) of the rows both models were evaluated on."""
    if job.get("validation_file"):
        return job["validation_file"], f"ftaas file {job['validation_file']}", "validation"
    if job.get("training_file"):
        return job["training_file"], f"held-out rows of ftaas file {job['training_file']}", "held-out"
    return "held-out", "held-out rows", "held-out"


def _tested_on(job: dict) -> tuple[str, str, str]:
    if job.get("test_file"):
        return job["test_file"], f"ftaas file {job['test_file']}", "test"
    return job.get("training_file") or "test", f"test rows of ftaas file {job.get('training_file')}", "test"


def _eval_results(job: dict, tuned: dict | None, test: bool = False) -> list[EvalResult]:
    dataset, name, split = _tested_on(job) if test else _evaluated_on(job)
    return [
        EvalResult(
            task_type=TASK,
            dataset_type=dataset,
            dataset_name=name,
            dataset_split=split,
            metric_type=key,
            metric_name=key,
            metric_value=float(value),
        )
        for key in METRIC_NAMES
        if (value := (tuned or {}).get(key)) is not None and math.isfinite(value)
    ]


def _body(
    job: dict,
    spec: JobSpec,
    base: dict | None,
    tuned: dict | None,
    params: tuple[int, int],
    step: int | None,
    merged: bool,
) -> str:
    trainable, total = params
    kind = spec.adapter.type
    title = job["fine_tuned_model"] + (f" (checkpoint of step {step})" if step is not None else "")
    lines = [
        f"# {title}" + (" merged into its base model" if merged else ""),
        "",
        f"Fine-tuned by ftaas job `{job['id']}` from `{job['model']}` with **{kind}**"
        + (f", by preference tuning (DPO, beta {spec.hyperparameters.beta})." if spec.preference else "."),
        f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(1, total):.4f}%).",
    ]
    if step is not None:
        lines.append(f"These are the weights after optimizer step {step}, evaluated on the job's held-out rows.")
    if merged:
        lines += ["", *_merged_note(job, kind)]
    lines += ["", _data_line(job), "", *_load_it(job, kind, kind == "full" or merged)]
    lines += [
        "",
        "## Evaluation (same rows for both models)",
        f"| metric | base | {'tuned' if step is None else f'step {step}'} |",
        "| --- | --- | --- |",
    ]
    for key in METRIC_NAMES:
        b, t = (base or {}).get(key), (tuned or {}).get(key)
        if b is not None or t is not None:
            lines.append(f"| {key} | {_fmt(b)} | {_fmt(t)} |")
    lines += [
        "",
        "## Training settings",
        "```json",
        json.dumps({"seed": job["seed"], **spec.stored()}, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def _merged_note(job: dict, kind: str) -> list[str]:
    lines = [
        f"This is `{job['model']}` with the job's {kind} adapter merged into its weights, saved in bfloat16: a plain",
        "transformers model, for serving engines that take no adapters. The evaluation below was measured with the",
        "adapter applied to the base model before merging; the merged weights give the same outputs up to bf16",
        "rounding.",
    ]
    if kind == "qlora":
        lines += [
            "The adapter was trained on the 4-bit (NF4) quantized base and is merged here into the unquantized bf16",
            "base, so outputs can differ slightly more from those measured on the 4-bit base.",
        ]
    return lines


def _data_line(job: dict) -> str:
    trained_on = f"ftaas file `{job['training_file']}`" if job.get("training_file") else "an ftaas file"
    _dataset, evaluated_on, _split = _evaluated_on(job)
    return f"Trained on {trained_on}; evaluated on {evaluated_on}."


def _load_it(job: dict, kind: str, whole: bool) -> list[str]:
    lines = ["## Load it", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if whole:
        what = (
            "a full model (every weight fine-tuned)" if kind == "full" else "the base model with the adapter merged in"
        )
        lines += [
            f"# {what}, not an adapter: no base model and no peft needed",
            "model = AutoModelForCausalLM.from_pretrained('path/to/this/folder')",
        ]
    else:
        lines += [
            "from peft import PeftModel",
            f"base = AutoModelForCausalLM.from_pretrained({job['model']!r})  # its hub id, or your copy's folder",
            "model = PeftModel.from_pretrained(base, 'path/to/this/folder')",
        ]
    lines += ["tokenizer = AutoTokenizer.from_pretrained('path/to/this/folder')", "```"]
    return lines


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"

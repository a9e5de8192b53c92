"""The downloadable archive (tar.gz, folder `adapter/`): tokenizer files, a model card, and either the adapter
(safetensors weights + adapter config) or, for full fine-tuning, the whole model as transformers saves it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

from app.core.job_spec import JobSpec
from app.core.metrics import METRIC_NAMES


def model_card(
    job: dict,
    spec: JobSpec | dict,
    base: dict | None,
    tuned: dict | None,
    params: tuple[int, int],
    step: int | None = None,
) -> str:
    """The archive's README.md. `step`: the card of one evaluated checkpoint, `tuned` being its metrics."""
    trainable, total = params
    spec = JobSpec.of(spec)
    kind = spec.adapter.type
    full = kind == "full"
    lines = [
        "---",
        f"base_model: {job['model']}",
        f"library_name: {'transformers' if full else 'peft'}",
        f"tags: [ftaas, {kind}]",
        "---",
        f"# {job['fine_tuned_model']}" + (f" (checkpoint of step {step})" if step is not None else ""),
        "",
        f"Fine-tuned by ftaas job `{job['id']}` from `{job['model']}` with **{kind}**.",
        f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(1, total):.4f}%).",
    ]
    if step is not None:
        lines.append(f"These are the weights after optimizer step {step}, evaluated on the job's held-out rows.")
    lines += ["", "## Load it", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if full:
        lines += [
            "# a full model (every weight fine-tuned), not an adapter: no base model and no peft needed",
            "model = AutoModelForCausalLM.from_pretrained('path/to/this/folder')",
        ]
    else:
        lines += [
            "from peft import PeftModel",
            f"base = AutoModelForCausalLM.from_pretrained({job['model']!r})",
            "model = PeftModel.from_pretrained(base, 'path/to/this/folder')",
        ]
    lines += [
        "tokenizer = AutoTokenizer.from_pretrained('path/to/this/folder')",
        "```",
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


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_adapter(
    model, tokenizer, folder: Path, archive: Path, card: str, keep_folder: bool = True
) -> tuple[Path, str, int]:
    """Save the model's adapter (or, for a plain transformers model, the whole model) with the tokenizer and
    the card into `folder`, and write `archive` from it atomically; returns (archive, sha256, size).

    keep_folder: the job's main folder (jobs_dir/<job>/adapter) stays, comparisons load it from there.
    """
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.parent / f".{archive.name}.{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    try:
        # peft writes adapter_model.safetensors + adapter_config.json; transformers (safetensors only since
        # v5, where the flag is ignored) config.json + model.safetensors, tied embeddings stored once.
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
        (folder / "README.md").write_text(card)
        with tarfile.open(tmp, "w:gz") as tar:
            for f in sorted(folder.iterdir()):
                tar.add(f, arcname=f"adapter/{f.name}")
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
        if not keep_folder:
            shutil.rmtree(folder, ignore_errors=True)
    return archive, sha256_of(archive), archive.stat().st_size

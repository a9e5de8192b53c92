"""The downloadable adapter: safetensors weights, adapter config, tokenizer files and a model card, as tar.gz."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

from app.metric_names import METRIC_NAMES


def model_card(job: dict, spec: dict, base: dict | None, tuned: dict | None, params: tuple[int, int]) -> str:
    trainable, total = params
    lines = [
        "---",
        f"base_model: {job['model']}",
        "library_name: peft",
        "tags: [ftaas, " + spec["adapter"]["type"] + "]",
        "---",
        f"# {job['fine_tuned_model']}",
        "",
        f"Fine-tuned by ftaas job `{job['id']}` from `{job['model']}` with **{spec['adapter']['type']}**.",
        f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / max(1, total):.4f}%).",
        "",
        "## Load it",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "from peft import PeftModel",
        f"base = AutoModelForCausalLM.from_pretrained({job['model']!r})",
        "model = PeftModel.from_pretrained(base, 'path/to/this/folder')",
        "tokenizer = AutoTokenizer.from_pretrained('path/to/this/folder')",
        "```",
        "",
        "## Evaluation (same rows for both models)",
        "| metric | base | tuned |",
        "| --- | --- | --- |",
    ]
    for key in METRIC_NAMES:
        b, t = (base or {}).get(key), (tuned or {}).get(key)
        if b is not None or t is not None:
            lines.append(f"| {key} | {_fmt(b)} | {_fmt(t)} |")
    lines += ["", "## Training settings", "```json", json.dumps({"seed": job["seed"], **spec}, indent=2), "```", ""]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_adapter(model, tokenizer, workdir: Path, card: str) -> tuple[Path, str, int]:
    """Save the adapter and write the archive atomically; returns (archive, sha256, size)."""
    folder = workdir / "adapter"
    shutil.rmtree(folder, ignore_errors=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    (folder / "README.md").write_text(card)
    archive, tmp = workdir / "adapter.tar.gz", workdir / f".adapter.tar.gz.{os.getpid()}"
    with tarfile.open(tmp, "w:gz") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f"adapter/{f.name}")
    os.replace(tmp, archive)
    return archive, sha256_of(archive), archive.stat().st_size

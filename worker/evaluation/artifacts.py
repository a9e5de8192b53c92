"""The downloadable archive (tar.gz, folder `adapter/`): tokenizer files, a model card (worker/evaluation/
model_card.py), and either the adapter (safetensors weights + adapter config) or, for full fine-tuning, the whole
model as transformers saves it. Its configs name the base model by its public name, so it loads anywhere."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from pathlib import Path

from worker.training.modeling import is_peft


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def name_base_model(model, base_model: str) -> None:
    """Make the configs saved with `model` name its base as clients know it (app.core.settings.public_model_name).

    peft records the path from_pretrained read (`base_model_name_or_path`, and prompt tuning's
    `tokenizer_name_or_path`), here the worker's own directory, which loads nowhere else; transformers keeps it as
    the config's `_name_or_path`."""
    if is_peft(model):
        for config in model.peft_config.values():
            config.base_model_name_or_path = base_model
            if getattr(config, "tokenizer_name_or_path", None):  # prompt tuning initialised from a text
                config.tokenizer_name_or_path = base_model
        return
    model.config.name_or_path = model.name_or_path = base_model


def save_model_files(
    model, tokenizer, folder: Path, card: str, base_model: str, state_dict: dict | None = None
) -> None:
    """The model (adapter, or whole model), its tokenizer and its card in `folder`; `state_dict`: its weights, where
    not the model's own."""
    name_base_model(model, base_model)
    given = {} if state_dict is None else {"state_dict": state_dict}
    # peft writes adapter_model.safetensors + adapter_config.json; transformers (safetensors only since
    # v5, where the flag is ignored) config.json + model.safetensors, tied embeddings stored once.
    if is_peft(model):
        # No copy of the base's embeddings: the vocabulary is never resized. peft's "auto" would look the base
        # up by the public name just set, on the Hub when it names a local model.
        model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False, **given)
    else:
        model.save_pretrained(str(folder), safe_serialization=True, **given)
    tokenizer.save_pretrained(str(folder))
    (folder / "README.md").write_text(card)


def write_archive(folder: Path, archive: Path, top: str, compresslevel: int = 9) -> tuple[Path, str, int]:
    """`folder`'s files as `archive` (tar.gz, under the folder `top/`), written atomically (a temp file renamed);
    returns (archive, sha256, size)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.parent / f".{archive.name}.{os.getpid()}"
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=compresslevel) as tar:
            for f in sorted(folder.iterdir()):
                tar.add(f, arcname=f"{top}/{f.name}")
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive, sha256_of(archive), archive.stat().st_size


def package_adapter(
    model,
    tokenizer,
    folder: Path,
    archive: Path,
    card: str,
    *,
    base_model: str,
    keep_folder: bool = True,
    state_dict: dict | None = None,
) -> tuple[Path, str, int]:
    """Save the model's adapter (or, for a plain transformers model, the whole model) with the tokenizer and
    the card into `folder`, and write `archive` from it atomically; returns (archive, sha256, size).

    base_model: the base's public name, written into the saved configs instead of the worker's path.
    keep_folder: the job's main folder (jobs_dir/<job>/adapter) stays, comparisons load it from there.
    state_dict: the weights to save by the model's state_dict names, where the model cannot give them itself (one
    sharded over ranks: worker/training/sharding.py); None: the model's own.
    """
    shutil.rmtree(folder, ignore_errors=True)
    try:
        save_model_files(model, tokenizer, folder, card, base_model, state_dict)
        return write_archive(folder, archive, "adapter")
    finally:
        if not keep_folder:
            shutil.rmtree(folder, ignore_errors=True)

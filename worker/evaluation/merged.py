"""A LoRA or QLoRA adapter merged into its base model's weights, saved in bf16: a plain transformers model for
serving engines that take no adapters (GET .../adapter?format=merged; why on request: app/jobs/merging.py).

The merge starts from the adapter's own archive, the very files a user downloads, and from the base loaded
unquantized in bf16, also for QLoRA: merging into 4-bit weights would round the adapter away. It runs on the CPU,
which holds a model's bf16 weights where the GPU may be busy, and is short next to reading and writing them.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import torch

from worker.evaluation.artifacts import save_model_files, write_archive
from worker.training.modeling import check_adapter_source, check_model_source, load_tokenizer

MERGED_DTYPE = torch.bfloat16
# The weights are most of the archive and gzip barely shrinks them: level 1 writes an 8B model's 16 GB in a few
# minutes where level 9 takes several times as long, for a few percent.
MERGED_COMPRESSLEVEL = 1


def merge_into_base(adapter_dir: Path, base_source: str):
    """The base model (bf16, CPU) with the adapter in `adapter_dir` merged into its weights, peft removed."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    check_adapter_source(adapter_dir)
    check_model_source(base_source)
    base = AutoModelForCausalLM.from_pretrained(
        base_source,
        dtype=MERGED_DTYPE,
        device_map={"": "cpu"},
        use_safetensors=True,
        trust_remote_code=False,
    )
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def package_merged(
    adapter_archive: Path, base_source: str, base_model: str, card: str, archive: Path
) -> tuple[Path, str, int]:
    """`archive` (tar.gz, folder `merged/`): the base with the adapter archive's adapter merged in, the tokenizer
    and `card`, its config naming the base by its public name `base_model`; returns (archive, sha256, size)."""
    work = archive.parent / f".work-{archive.name}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        with tarfile.open(adapter_archive) as tar:
            tar.extractall(work, filter="data")
        adapter_dir = work / "adapter"
        merged = merge_into_base(adapter_dir, base_source)
        save_model_files(merged, load_tokenizer(str(adapter_dir)), work / "merged", card, base_model)
        return write_archive(work / "merged", archive, "merged", compresslevel=MERGED_COMPRESSLEVEL)
    finally:
        shutil.rmtree(work, ignore_errors=True)

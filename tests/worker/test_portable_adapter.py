"""A downloaded adapter loads anywhere: from a real short LoRA run of the training child, every archive (the shipped
one and each evaluated checkpoint's) names its base by the public name, never the worker's directory, loads onto
a base model loaded on its own with peft, and carries a Hugging Face model card that huggingface_hub parses."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch

from tests.conftest import MODEL_DIR
from tests.helpers.child import run_job, sql_rows, stored

PUBLIC_NAME = "stories260k"  # how GET /v1/models names ../shared/models/stories260k
SERVER_PATHS = {str(MODEL_DIR).encode(), str(MODEL_DIR.resolve()).encode()}


def short_lora_body(**adapter) -> dict:
    """Two optimizer steps, each evaluated (so each has its own archive), on a few rows: seconds on a CPU."""
    return {
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
        "adapter": {"type": "lora", "r": 4, "dropout": 0.0, **adapter},
        "training": {"learning_rate": 5e-3},
        "evaluation": {"metrics": ["perplexity", "token_accuracy"], "max_rows": 4, "eval_every_steps": 1},
    }


@pytest.fixture(scope="module")
def lora_job(database):
    """A LoRA job run by the training child's run() in this process, and what it stored."""
    job_id = run_job(short_lora_body(), sql_rows("train.jsonl", 16), sql_rows("test.jsonl", 4), "\nA: ")
    job, evals, _rows, ckpts, events = stored(job_id)
    assert job.status == "succeeded", (job.error, events)
    return job, evals, ckpts


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "adapter"


def archives_of(job, ckpts) -> dict[str, Path]:
    from app.core.settings import get_settings

    jobs_dir = get_settings().jobs_dir
    found = {"shipped": jobs_dir / job.adapter_name}
    found.update({f"step-{c.step}": jobs_dir / c.adapter_name for c in ckpts if c.adapter_name})
    return found


def test_every_archive_names_the_base_by_its_public_name(lora_job, tmp_path):
    job, _evals, ckpts = lora_job
    archives = archives_of(job, ckpts)
    assert set(archives) == {"shipped", "step-1", "step-2"}
    for label, archive in archives.items():
        folder = unpack(archive, tmp_path / label)
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == PUBLIC_NAME, label
        for f in folder.iterdir():  # nor anywhere else: tokenizer files, card, weights' metadata
            data = f.read_bytes()
            assert not any(path in data for path in SERVER_PATHS), f"{label}/{f.name} names the server's directory"


def test_the_card_is_a_hugging_face_model_card(lora_job, tmp_path):
    from huggingface_hub import ModelCard

    job, evals, ckpts = lora_job
    for label, archive in archives_of(job, ckpts).items():
        card = ModelCard.load(unpack(archive, tmp_path / label) / "README.md")
        assert card.data.base_model == PUBLIC_NAME and card.data.library_name == "peft", label
        assert {"ftaas", "lora"} <= set(card.data.tags) and card.data.pipeline_tag == "text-generation"
        assert card.data.metrics == ["perplexity", "token_accuracy"]
        assert "datasets" not in card.data.to_dict()  # a training file is no Hub dataset: named in the text
        assert job.training_file_id in card.text and "PeftModel.from_pretrained" in card.text
        # the model-index holds the tuned model's evaluation (the checkpoint's own, in a checkpoint's card)
        tuned = (
            evals["tuned"].metrics
            if label == "shipped"
            else next(c.metrics for c in ckpts if f"step-{c.step}" == label)
        )
        assert card.data.model_name == job.fine_tuned_model
        results = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert results and all(results[k] == pytest.approx(tuned[k]) for k in results), label
        assert {r.dataset_type for r in card.data.eval_results} == {job.validation_file_id}


def test_the_adapter_loads_with_peft_onto_a_base_loaded_on_its_own(lora_job, tok, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    job, _evals, _ckpts = lora_job
    folder = unpack(archives_of(job, [])["shipped"], tmp_path)
    ids = torch.tensor([tok("Q: How many heads?\nA: SELECT").input_ids])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(MODEL_DIR).eval()(ids).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(MODEL_DIR), folder).eval()
        assert tuned.peft_config["default"].base_model_name_or_path == PUBLIC_NAME
        assert not torch.allclose(tuned(ids).logits, base_logits)  # the trained weights are applied


def test_prompt_tuning_initialised_from_text_names_its_tokenizer_by_the_public_name(tok, tmp_path):
    """Prompt tuning from a text records the tokenizer it read the text with: the public name too."""
    from tests.helpers.training import CPU, SRC, adapter
    from worker.evaluation.artifacts import package_adapter
    from worker.training.modeling import load_base_model, wrap_for_training

    spec = adapter("prompt_tuning", prompt_tuning_init_text="Write SQL for the question")
    model = wrap_for_training(load_base_model(SRC, spec, CPU), spec, SRC, False)
    archive, _digest, _size = package_adapter(
        model, tok, tmp_path / "adapter", tmp_path / "a.tar.gz", "card", base_model=PUBLIC_NAME
    )
    config = json.loads((unpack(archive, tmp_path / "out") / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == config["tokenizer_name_or_path"] == PUBLIC_NAME

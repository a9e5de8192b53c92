"""A downloaded adapter loads anywhere: from a real short LoRA run of the training child, every archive (the shipped
one and each evaluated checkpoint's) names its base by the public name, never the worker's directory, loads onto
a base model loaded on its own with peft, and carries a Hugging Face model card that huggingface_hub parses.

And its merged model (GET .../adapter?format=merged, the worker's side, without Celery): the base with the adapter
merged in, bf16 safetensors that transformers loads alone and that give the logits of base + adapter; QLoRA merges
into the bf16 base; a build's failures and redeliveries. The API's side: tests/api/test_api_merged_download.py."""

from __future__ import annotations

import json
import tarfile
import uuid
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


def unpack(archive: Path, into: Path, top: str = "adapter") -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / top


def archives_of(job, ckpts) -> dict[str, Path]:
    from app.core.settings import get_settings

    jobs_dir = get_settings().artifacts_dir / "jobs"
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


# ================================================================== the merged model


def test_the_worker_registers_the_merge_task_on_the_training_queue():
    from app.core.celery_app import MERGE_TASK
    from tests.conftest import TEST_ENV
    from worker.tasks import celery

    celery.loader.import_default_modules()  # what `celery -A worker.tasks worker` does at start-up
    assert MERGE_TASK == "ftaas.merge" and MERGE_TASK in celery.tasks
    assert celery.amqp.router.route({}, MERGE_TASK)["queue"].name == TEST_ENV["FTAAS_QUEUE_NAME"]


def merge_row(job_id: str, source: str = "adapter") -> str:
    """A merged model asked for, as the API's first request leaves it (queued)."""
    from app.core.db import get_sessionmaker
    from app.core.tables import MergedModel

    with get_sessionmaker()() as s:
        row = MergedModel(job_id=job_id, source=source)
        s.add(row)
        s.commit()
        return row.id


def merged_row(merge_id: str):
    from app.core.db import get_sessionmaker
    from app.core.tables import MergedModel

    with get_sessionmaker()() as s:
        return s.get(MergedModel, merge_id)


def claimed(merge_id: str) -> int:
    from app.core.db import get_sessionmaker
    from app.core.job_state import claim_merge

    with get_sessionmaker()() as s:
        return claim_merge(s, merge_id)


def logits_of(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits.float()


def base_plus_adapter(adapter_dir: Path, ids, base_dtype=torch.float32) -> torch.Tensor:
    """The reference: the base loaded on its own (in `base_dtype`, computed in fp32) with the adapter by peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=base_dtype).float()
    return logits_of(PeftModel.from_pretrained(base, adapter_dir), ids)


def check_merged_logits(folder: Path, adapter_dir: Path, ids) -> None:
    """The merged bf16 model, loaded by transformers alone, gives the logits of base + adapter up to bf16 rounding,
    the same greedy tokens where they are clear, and is farther from the base alone than from base + adapter."""
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(folder)
    assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
    got = logits_of(merged, ids)
    want = base_plus_adapter(adapter_dir, ids)
    atol = 0.03 * want.abs().max().item()  # bf16 keeps 8 bits of mantissa
    torch.testing.assert_close(got, want, atol=atol, rtol=0)
    # the same next token wherever the reference's choice is clear (near-ties may flip with bf16 rounding)
    top2 = want.topk(2, dim=-1).values
    clear = top2[..., 0] - top2[..., 1] > 2 * atol
    assert clear.any() and torch.equal(got.argmax(-1)[clear], want.argmax(-1)[clear])
    base_alone = logits_of(AutoModelForCausalLM.from_pretrained(MODEL_DIR), ids)
    assert (got - want).abs().mean() < (got - base_alone).abs().mean()  # the adapter is in


def test_the_merge_task_builds_a_bf16_model_with_the_logits_of_base_plus_adapter(lora_job, tok, tmp_path):
    """The Celery task function (called directly) claims the row and runs `python -m worker.child merge ID N`."""
    from huggingface_hub import ModelCard

    from app.core.settings import get_settings
    from worker.evaluation.artifacts import sha256_of
    from worker.tasks.merges import merge

    job, _evals, _ckpts = lora_job
    merge_id = merge_row(job.id)
    assert merge(merge_id) == "done"
    row = merged_row(merge_id)
    assert row.status == "ready" and row.attempt == 1 and row.error is None, row.error
    archive = get_settings().artifacts_dir / "jobs" / row.archive_name
    assert sha256_of(archive) == row.sha256 and archive.stat().st_size == row.bytes
    folder = unpack(archive, tmp_path / "merged", top="merged")
    names = {f.name for f in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md"} <= names
    assert not names & {"adapter_config.json", "adapter_model.safetensors"}
    config = json.loads((folder / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    for f in folder.iterdir():
        assert not any(path in f.read_bytes() for path in SERVER_PATHS), f.name
    card = ModelCard.load(folder / "README.md")
    assert (card.data.base_model, card.data.library_name) == (PUBLIC_NAME, "transformers")
    assert {"ftaas", "lora", "merged"} <= set(card.data.tags) and "merged into its base model" in card.text

    ids = torch.tensor([tok("Q: How many heads are in the department?\nA: SELECT").input_ids])
    check_merged_logits(folder, unpack(get_settings().artifacts_dir / "jobs" / job.adapter_name, tmp_path / "a"), ids)
    assert merge(merge_id) == "skipped"  # a second delivery: built already


def test_a_checkpoint_merges_its_own_weights(lora_job, tok, tmp_path):
    from app.core.settings import get_settings
    from worker.child.merge import run_merge

    job, _evals, ckpts = lora_job
    (step1,) = [c for c in ckpts if c.step == 1]
    merge_id = merge_row(job.id, "step-1")
    assert run_merge(merge_id, claimed(merge_id)) == "ready"
    row = merged_row(merge_id)
    folder = unpack(get_settings().artifacts_dir / "jobs" / row.archive_name, tmp_path / "m", top="merged")
    assert "checkpoint of step 1" in (folder / "README.md").read_text()
    ids = torch.tensor([tok("Q: Which team won?\nA: SELECT").input_ids])
    check_merged_logits(folder, unpack(get_settings().artifacts_dir / "jobs" / step1.adapter_name, tmp_path / "a"), ids)


def test_qlora_merges_into_the_bf16_base_not_the_4bit_one(tok, tmp_path):
    """A QLoRA adapter (trained on the NF4 base) merged into the unquantized bf16 base: plain bf16 weights."""
    from tests.helpers.training import trained
    from worker.evaluation.artifacts import package_adapter
    from worker.evaluation.merged import package_merged

    archive, _digest, _size = package_adapter(
        trained("qlora", tok), tok, tmp_path / "adapter", tmp_path / "a.tar.gz", "card", base_model=PUBLIC_NAME
    )
    merged, digest, size = package_merged(archive, str(MODEL_DIR), PUBLIC_NAME, "card", tmp_path / "m.tar.gz")
    assert len(digest) == 64 and size == merged.stat().st_size
    folder = unpack(merged, tmp_path / "m", top="merged")
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    ids = torch.tensor([tok("Q: Who is the coach?\nA: SELECT").input_ids])
    check_merged_logits(folder, tmp_path / "adapter", ids)


def test_a_build_that_fails_says_why_and_a_crashed_child_is_recorded(database):
    """The adapter archive is gone: the child fails the build with the reason. A child that dies before it can
    say anything (here: a checkpoint that has no row) leaves the task to fail the row with its log's last line."""
    from app.core.db import get_sessionmaker
    from app.core.tables import Tenant
    from tests.helpers.factories import adapter_job, make_file_row
    from worker.child.merge import run_merge
    from worker.tasks.merges import merge

    with get_sessionmaker()() as s:
        tenant = Tenant(name=f"merge-fails-{uuid.uuid4().hex[:8]}")
        s.add(tenant)
        s.flush()
        job_id = adapter_job(s, tenant, make_file_row(s, tenant)).id  # names an archive never written
        tenant_id = tenant.id
        s.commit()
    merge_id = merge_row(job_id)
    assert run_merge(merge_id, claimed(merge_id)) == "failed"
    row = merged_row(merge_id)
    assert row.status == "failed" and row.error["code"] == "merge_failed"
    assert "FileNotFoundError" in row.error["message"] and row.finished_at is not None

    crashing = merge_row(job_id, "step-99")
    assert merge(crashing) == "failed"
    row = merged_row(crashing)
    assert (
        row.status == "failed" and row.error["code"] == "merge_crashed" and "exited with code" in row.error["message"]
    )
    with get_sessionmaker()() as s:
        s.delete(s.get(Tenant, tenant_id))  # cascades to its file, job and merged models
        s.commit()


def test_a_redelivery_takes_over_a_build_and_fences_the_old_one(lora_job):
    """A worker that died mid-build leaves the row building: a plain duplicate leaves it alone, the broker's
    redelivery claims it again with the next attempt, and the old attempt's outcome is then written nowhere."""
    from app.core.db import get_sessionmaker
    from app.core.job_state import claim_merge, finish_merge

    job, _evals, _ckpts = lora_job
    merge_id = merge_row(job.id, "step-2")
    assert claimed(merge_id) == 1
    with get_sessionmaker()() as s:
        assert claim_merge(s, merge_id) is None
        assert claim_merge(s, merge_id, take_over_building=True) == 2
        assert not finish_merge(s, merge_id, 1, "failed", error={"code": "x", "message": "old"})
        assert finish_merge(s, merge_id, 2, "failed", error={"code": "y", "message": "new"})
    assert merged_row(merge_id).error["code"] == "y"

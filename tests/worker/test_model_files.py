"""Model files a job or a comparison would read: pickle weights and remote code are refused before anything
is read, and a malicious pickle is never unpickled (its side effect, creating a file, never happens), on
every path: the model check, the tokenizer, the config-only parameter count, the base model load, a stored
adapter, a tampered training checkpoint, and a whole job."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import MODEL_DIR
from tests.helpers.child import run_job, sql_rows, stored
from worker.training.checkpoints import TRAINER_STATE, load_checkpoint, save_trainable_weights
from worker.training.modeling import (
    ModelRefused,
    check_adapter_source,
    check_model_source,
    count_params_of_config,
    load_base_model,
    load_tokenizer,
)

LORA = {"type": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}


class _Evil:
    """Unpickling this creates `marker`: proof that a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def evil_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"model.embed_tokens.weight": _Evil(marker)}))


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "UNPICKLED"
    yield m
    assert not m.exists(), "a malicious pickle was unpickled"


@pytest.fixture
def pickle_model(tmp_path, marker) -> Path:
    """The real tiny model's config and tokenizer, with its weights only as a malicious pytorch_model.bin."""
    d = tmp_path / "pickled-model"
    shutil.copytree(MODEL_DIR, d, ignore=shutil.ignore_patterns("*.safetensors"))
    evil_pickle(d / "pytorch_model.bin", marker)
    return d


def test_the_fixture_really_runs_code_when_unpickled(tmp_path):
    canary = tmp_path / "canary"
    evil_pickle(tmp_path / "x.bin", canary)
    pickle.loads((tmp_path / "x.bin").read_bytes())
    assert canary.exists()  # so its absence below means "never unpickled", not "harmless"


def test_a_pickle_only_model_is_refused_on_every_path_and_never_unpickled(pickle_model, marker):
    for load in (
        lambda: check_model_source(str(pickle_model)),
        lambda: load_tokenizer(str(pickle_model)),
        lambda: count_params_of_config(str(pickle_model)),
        lambda: load_base_model(str(pickle_model), LORA, torch.device("cpu")),
    ):
        with pytest.raises(ModelRefused, match="safetensors"):
            load()


def test_remote_code_in_the_model_or_its_tokenizer_is_refused(tmp_path):
    for config in ("config.json", "tokenizer_config.json"):
        d = tmp_path / config
        shutil.copytree(MODEL_DIR, d)
        data = json.loads((d / config).read_text()) if (d / config).is_file() else {}
        data["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil", "AutoTokenizer": ["tok_evil.T", None]}
        (d / config).write_text(json.dumps(data))
        (d / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
        with pytest.raises(ModelRefused, match=f"remote code.*{config}"):
            load_tokenizer(str(d))
        with pytest.raises(ModelRefused, match="remote code"):
            load_base_model(str(d), LORA, torch.device("cpu"))
    check_model_source(str(MODEL_DIR))  # the real model passes


def test_a_pickle_adapter_is_refused_before_peft_reads_it(tmp_path, marker):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}))
    evil_pickle(d / "adapter_model.bin", marker)
    with pytest.raises(ModelRefused, match="adapter_model.safetensors"):
        check_adapter_source(d)
    (d / "adapter_model.safetensors").write_bytes(b"")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "auto_map": {"x": "y.Z"}}))
    with pytest.raises(ModelRefused, match="remote code"):
        check_adapter_source(d)


def test_a_tampered_checkpoint_is_read_as_data_only(tmp_path, marker):
    ckpt = tmp_path / "step-4"
    ckpt.mkdir()
    model = torch.nn.Linear(1, 1)
    save_trainable_weights(model, ckpt)  # genuine weights; only the trainer state is tampered with
    evil_pickle(ckpt / TRAINER_STATE, marker)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(ckpt, model, None, None)


def test_a_job_on_a_pickle_only_model_fails_as_refused_without_retrying(database, pickle_model, marker):
    rows = sql_rows("train.jsonl", 12)
    job_id = run_job({"adapter": LORA}, rows, None, "\nA: ", model_source=pickle_model, via_main=True)
    job, _evals, _rows, ckpts, events = stored(job_id)
    assert job.status == "failed", events
    assert job.error["code"] == "model_refused" and "safetensors" in job.error["message"]
    assert ckpts == []

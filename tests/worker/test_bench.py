"""CPU smoke test of the benchmark scripts in bench/ (the GPU runs themselves are not part of CI): the offline
word-level tokenizer of the random models, and every training configuration of bench_train.py for one step
on the tiny real Llama."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import MODEL_DIR, ROOT

sys.path.insert(0, str(ROOT / "bench"))

import random_model  # noqa: E402


def test_random_model_tokenizer_loads_offline_and_round_trips(tmp_path):
    from worker.training.data import Formatter
    from worker.training.modeling import load_tokenizer

    random_model.build_tokenizer(128_256).save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert len(tok) == 128_256
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (128_000, 128_001, 128_001)
    ids = tok("w0 w17 w127999", add_special_tokens=False)["input_ids"]
    assert ids == [0, 17, 127_999]
    assert tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids  # one word = one token
    ex = Formatter(tok, 512).example({"prompt": "w1 w2 ", "completion": "w3"})
    assert ex.input_ids == [128_000, 1, 2, 3, 128_001] and ex.labels == [-100, -100, -100, 3, 128_001]


def test_bench_train_every_configuration_runs(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable, str(ROOT / "bench" / "bench_train.py"), "--model", str(MODEL_DIR),
        "--configs", "1,2,3,4", "--steps", "1", "--warmup", "1", "--batch", "2", "--min-len", "32", "--max-len", "128",
        "--out", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
    results = json.loads(out.read_text())["train"]
    assert [r["name"] for r in results] == ["1", "2", "3", "4"]
    for r in results:
        assert "error" not in r, r
        assert r["timed_steps"] == 1 and r["tokens_per_s"] > 0 and r["loss_last"] > 0
    assert "| 2 | service qlora" in out.with_suffix(".md").read_text()

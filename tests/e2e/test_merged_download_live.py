"""format=merged through a running service (API under uvicorn, a Celery worker on Redis): a short QLoRA job, then
GET .../adapter?format=merged answers 202 with Retry-After while the worker merges the adapter into the bf16 base,
and then the archive, whose model transformers loads alone and which gives the logits of base + adapter. The
pieces in process: tests/api/test_api_merged_download.py and tests/worker/test_portable_adapter.py."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time

import torch

from tests.conftest import DATASETS, MODEL_DIR, REPORT
from tests.helpers.e2e_service import client_for, running_service, upload, wait_for_jobs, worker_logs

JOBS = "/v1/fine_tuning/jobs"


def unpack(data: bytes, into) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")


def test_a_qlora_job_downloads_merged_into_its_bf16_base(tmp_path):
    rows = tmp_path / "train.jsonl"
    with open(DATASETS / "wikisql" / "train.jsonl") as fh:
        rows.write_text("".join(fh.readlines()[:64]))
    with running_service(workers=1) as service:
        c = client_for(service)
        train = upload(c, rows, completion_separator="\nA: ")
        body = {
            "model": "stories260k",
            "training_file": train["id"],
            "seed": 7,
            "adapter": {"type": "qlora", "r": 8},
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 16}}},
            "training": {"learning_rate": 1e-2},
            "evaluation": {"metrics": ["perplexity"], "max_rows": 4},
        }
        r = c.post(JOBS, json=body)
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        job, _ = wait_for_jobs(c, [job_id], service["logs"])[job_id]
        assert job["status"] == "succeeded", f"{job['error']}\n{worker_logs(service)}"

        adapter = c.get(f"{JOBS}/{job_id}/adapter")
        unpack(adapter.content, tmp_path / "a")
        config = json.loads((tmp_path / "a" / "adapter" / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "stories260k"  # the public name, not the worker's path

        asked, answers = time.monotonic(), []
        while time.monotonic() - asked < 180:
            r = c.get(f"{JOBS}/{job_id}/adapter", params={"format": "merged"})
            answers.append(r.status_code)
            if r.status_code != 202:
                break
            assert r.json()["status"] in ("queued", "building") and int(r.headers["retry-after"]) > 0
            time.sleep(1)  # sooner than Retry-After asks: the tiny model merges in seconds
        assert r.status_code == 200, f"{r.status_code} {r.text[:300]}\n{worker_logs(service)}"
        assert answers[0] == 202 and hashlib.sha256(r.content).hexdigest() == r.headers["x-checksum-sha256"]
        built_in = time.monotonic() - asked
        again = c.get(f"{JOBS}/{job_id}/adapter", params={"format": "merged"})
        assert again.status_code == 200 and again.content == r.content  # built once, then downloaded as is
    unpack(r.content, tmp_path / "m")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "m" / "merged"
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok("Q: How many heads are in the department?\nA: SELECT").input_ids])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(folder).eval()
        assert {p.dtype for p in merged.parameters()} == {torch.bfloat16}
        got = merged(ids).logits.float()
        base = AutoModelForCausalLM.from_pretrained(MODEL_DIR)
        want = PeftModel.from_pretrained(base, tmp_path / "a" / "adapter").eval()(ids).logits
    torch.testing.assert_close(got, want, atol=0.03 * want.abs().max().item(), rtol=0)
    REPORT.append(f"[e2e] merged download of a QLoRA job: {len(r.content):,} bytes, ready {built_in:.0f}s after asking")

"""Preference tuning (DPO) end to end, as a user of OpenAI's DPO fine-tuning would bring it: OpenAI-format preference
files made from WikiSQL (preferred: the right SQL; non-preferred: the same SQL with its WHERE clause moved before
FROM), uploaded and trained through the official `openai` client, unmodified (ftaas' own settings ride in the
client's documented extra_body). The job succeeds; on the held-out pairs the tuned model prefers the right SQL far
more often than the base; the file's leaderboard ranks by preference accuracy; the adapter downloads."""

from __future__ import annotations

import io
import json
import time

import pytest
from openai import OpenAI

from tests.conftest import DATASETS
from tests.helpers.e2e_service import client_for, events_of, running_service, worker_logs
from tests.helpers.preference_rows import openai_preference_rows

TIMEOUT_S = 600


@pytest.fixture(scope="module")
def service():
    with running_service(workers=1) as svc:
        yield svc


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_dpo_through_the_openai_client_makes_held_out_pairs_preferred(service):
    client = OpenAI(base_url=f"{service['base']}/v1", api_key=service["key"], max_retries=0, timeout=60)
    train = client.files.create(
        file=("prefs.jsonl", io.BytesIO(jsonl(openai_preference_rows(DATASETS / "wikisql" / "train.jsonl", 48)))),
        purpose="fine-tune",
    )
    valid = client.files.create(
        file=("held.jsonl", io.BytesIO(jsonl(openai_preference_rows(DATASETS / "wikisql" / "valid.jsonl", 24)))),
        purpose="fine-tune",
    )
    job = client.fine_tuning.jobs.create(
        model="stories260k",
        training_file=train.id,
        validation_file=valid.id,
        suffix="sql-dpo",
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 100}},
        },
        extra_body={
            "adapter": {"type": "lora", "r": 8},
            "evaluation": {"metrics": ["rouge", "perplexity"], "max_rows": 24, "max_new_tokens": 24},
        },
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.1

    deadline = time.monotonic() + TIMEOUT_S
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"still {job.status}\n{worker_logs(service)}"
        time.sleep(0.5)
    assert job.status == "succeeded", (job.error, worker_logs(service))
    assert job.fine_tuned_model.endswith(":sql-dpo:" + job.id)

    c = client_for(service)
    evaluation = c.get(f"/v1/fine_tuning/jobs/{job.id}/evaluation").json()
    base, tuned = evaluation["base"], evaluation["tuned"]
    print(
        f"\n[e2e dpo] held-out preference accuracy base {base['preference_accuracy']:.3f} -> tuned "
        f"{tuned['preference_accuracy']:.3f}; reward margin base {base['reward_margin']:.3f} -> tuned "
        f"{tuned['reward_margin']:.3f}; rougeL vs the preferred SQL {base['rougeL']:.3f} -> {tuned['rougeL']:.3f}"
    )
    assert evaluation["num_rows"] == 24
    assert base["reward_margin"] == pytest.approx(0.0, abs=1e-6)  # the base is the reference
    assert tuned["preference_accuracy"] >= base["preference_accuracy"] + 0.3
    assert tuned["preference_accuracy"] >= 0.8 and tuned["reward_margin"] > 0.5
    assert "rougeL" in tuned and "perplexity" in tuned  # generation and loss on the preferred answers too
    sample = evaluation["samples"][0]
    assert sample["tuned_scores"]["preference_accuracy"] in (0.0, 1.0) and "chosen_logp" in sample["tuned_scores"]

    board = c.get(f"/v1/files/{train.id}/leaderboard").json()
    assert board["metric"] == "preference_accuracy"
    assert board["data"][0]["job_id"] == job.id and board["data"][0]["value"] == tuned["preference_accuracy"]
    events = events_of(c, job.id)
    assert any("Reference log-probabilities of" in e and "adapter disabled" in e for e in events), events
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and all("preference_accuracy" in ck.metrics.model_dump() for ck in checkpoints)
    adapter = c.get(f"/v1/fine_tuning/jobs/{job.id}/adapter")
    assert adapter.status_code == 200 and adapter.content[:2] == b"\x1f\x8b"

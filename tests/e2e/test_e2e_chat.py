"""An OpenAI-format chat file end to end through the real service: rows with a system prompt, a tool call and its
result, an assistant turn with weight 0 and the trained answer. The preview (made by the real preview worker) shows
exactly which tokens will be trained; the job trains on them and succeeds; its evaluation prompts are the chat
template's generation prompt (stories260k has no template: ftaas' plain one, which the adapter carries)."""

from __future__ import annotations

import json
import tarfile

import pytest

from tests.conftest import DATASETS
from tests.helpers.e2e_service import client_for, events_of, running_service, wait_for_jobs

SYSTEM = "You write SQL for the table you are shown."
NOTE = "Let me look at the columns."  # the weight-0 turn: context, never trained
TOOL = {
    "type": "function",
    "function": {
        "name": "columns",
        "description": "the columns of a table",
        "parameters": {"type": "object", "properties": {"table": {"type": "string"}}, "required": ["table"]},
    },
}


@pytest.fixture(scope="module")
def service():
    with running_service(workers=1, preview_worker=True) as svc:
        yield svc


def chat_rows(n: int) -> list[dict]:
    rows = []
    for i, line in enumerate((DATASETS / "wikisql" / "train.jsonl").read_text().splitlines()[:n]):
        head, answer = json.loads(line)["text"].rsplit("\nA: ", 1)
        table, columns, question = head.split("\n", 2)
        table = table.removeprefix("table: ")
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "columns", "arguments": json.dumps({"table": table})},
        }
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": question.removeprefix("Q: ").strip()},
                    {"role": "assistant", "content": NOTE, "weight": 0},
                    {"role": "user", "content": f"The table is {table}."},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": f"call_{i}", "content": columns.removeprefix("columns: ")},
                    {"role": "assistant", "content": answer, "weight": 1},
                ],
                "tools": [TOOL],
            }
        )
    return rows


def test_an_openai_chat_file_previews_trains_and_evaluates(service, tmp_path):
    c = client_for(service)
    rows = chat_rows(48)
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    upload = c.post("/v1/files", files={"file": ("chat.jsonl", body)}, data={"purpose": "fine-tune"})
    assert upload.status_code == 200 and upload.json()["shape"] == "chat", upload.text
    file_id = upload.json()["id"]

    preview = c.post(f"/v1/files/{file_id}/preview", json={"model": "stories260k", "max_seq_length": 512, "rows": 2})
    assert preview.status_code == 200, preview.text
    shown = preview.json()
    assert (shown["rows_counted"], shown["rows_dropped"]) == (48, 0)
    first = shown["rows"][0]
    answer = rows[0]["messages"][-1]["content"]
    trained = first["trained_text"]
    assert answer in trained and '"name": "columns"' in trained  # the answer and the tool call are trained
    assert NOTE not in trained and SYSTEM not in trained and NOTE in first["text"]  # context is not
    assert sum(t["trained"] for t in first["tokens"]) == first["num_trained_tokens"] > 0

    job = c.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "stories260k",
            "training_file": file_id,
            "suffix": "chat",
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 8}}},
            "adapter": {"type": "lora", "r": 8},
            "training": {"learning_rate": 0.005, "validation_split": 0.2},
            "evaluation": {"metrics": ["rouge", "token_accuracy"], "max_rows": 6, "max_new_tokens": 24},
        },
    )
    assert job.status_code == 200, job.text
    ((result, _),) = wait_for_jobs(c, [job.json()["id"]], service["logs"]).values()
    assert result["status"] == "succeeded", result["error"]
    assert result["data"]["training_rows"] + result["data"]["validation_rows"] <= 48
    assert result["data"]["rows_dropped"] == 0 and result["data"]["training_rows"] > 30
    evaluation = c.get(f"/v1/fine_tuning/jobs/{result['id']}/evaluation").json()
    sample = evaluation["samples"][0]
    assert sample["prompt"].endswith("### Assistant:\n") and "### Tools:" in sample["prompt"]
    assert sample["reference"] in {r["messages"][-1]["content"] for r in rows}
    assert any("Data:" in m for m in events_of(c, result["id"]))

    # the adapter carries the template it was trained with: whoever serves it renders chats the same way
    archive = tmp_path / "adapter.tar.gz"
    archive.write_bytes(c.get(f"/v1/fine_tuning/jobs/{result['id']}/adapter").content)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        config = next(n for n in names if n.endswith("tokenizer_config.json"))
        template = next((n for n in names if n.endswith("chat_template.jinja")), None)
        text = (
            tar.extractfile(template).read().decode()
            if template
            else json.load(tar.extractfile(config))["chat_template"]
        )
    assert "### Assistant:" in text and "generation" in text

"""POST /v1/files/{id}/preview: the preview worker's task (worker/tasks/preview.py, run here as
`ftaas preview-worker` would run it) makes the preview while the request waits without holding its admission turn;
the same request is then answered from the last preview; past FTAAS_PREVIEW_WAIT_S it is a 202 to poll; a row the
model's chat template cannot render is a 422 naming line and field."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from sqlalchemy import select

from app.core.tables import Preview
from tests.helpers.chat_rows import CHAT_ROW
from tests.helpers.chat_templates import family_tokenizer


@pytest.fixture
def tenant_key(live_server):
    from app.core.db import get_sessionmaker
    from app.tenants.service import create_key

    with get_sessionmaker()() as s:
        return {"Authorization": f"Bearer {create_key(s, 'preview-tenant')[1]}"}


def upload(server: str, auth: dict, rows: list[dict]) -> str:
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    r = httpx.post(
        f"{server}/v1/files", headers=auth, files={"file": ("chat.jsonl", body)}, data={"purpose": "fine-tune"}
    )
    assert r.status_code == 200, r.text
    return r.json()["id"]


def worker_makes_the_preview(file_id: str) -> None:
    """The preview worker's own task, run here on the queued preview (as `ftaas preview-worker` would)."""
    from app.core.db import get_sessionmaker
    from worker.tasks.preview import run_preview

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with get_sessionmaker()() as s:
            preview_id = s.scalar(select(Preview.id).where(Preview.file_id == file_id, Preview.status == "queued"))
        if preview_id:
            assert run_preview(preview_id) in ("succeeded", "failed")
            return
        time.sleep(0.1)
    raise AssertionError("no preview was queued")


def post_while_the_worker_runs(server: str, auth: dict, file_id: str, body: dict) -> httpx.Response:
    worker = threading.Thread(target=worker_makes_the_preview, args=(file_id,))
    worker.start()
    try:
        return httpx.post(f"{server}/v1/files/{file_id}/preview", headers=auth, json=body, timeout=60)
    finally:
        worker.join(60)


def test_the_preview_endpoint_answers_with_the_workers_rows_then_from_its_cache(live_server, tenant_key):
    file_id = upload(live_server, tenant_key, [CHAT_ROW, CHAT_ROW, CHAT_ROW])
    body = {"model": "stories260k", "rows": 2}
    r = post_while_the_worker_runs(live_server, tenant_key, file_id, body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["status"] == "succeeded" and len(got["rows"]) == 2 and got["rows_counted"] == 3
    row = got["rows"][0]
    assert "### Tools:" in row["text"] and "21 degrees, sunny." in row["trained_text"]  # the plain template
    assert sum(t["trained"] for t in row["tokens"]) == row["num_trained_tokens"] > 0
    started = time.monotonic()
    again = httpx.post(f"{live_server}/v1/files/{file_id}/preview", headers=tenant_key, json=body)
    assert again.status_code == 200 and again.json()["id"] == got["id"] and time.monotonic() - started < 2
    read = httpx.get(f"{live_server}/v1/files/{file_id}/previews/{got['id']}", headers=tenant_key)
    assert read.status_code == 200 and read.json()["rows"] == got["rows"]


def test_a_preview_not_made_in_time_is_a_202_to_poll(live_server, tenant_key, monkeypatch):
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "preview_wait_s", 0.0)
    file_id = upload(live_server, tenant_key, [CHAT_ROW])
    r = httpx.post(f"{live_server}/v1/files/{file_id}/preview", headers=tenant_key, json={"model": "stories260k"})
    assert r.status_code == 202 and r.headers["Retry-After"] == "1" and r.json()["status"] == "queued"
    worker_makes_the_preview(file_id)
    done = httpx.get(f"{live_server}{r.headers['Location']}", headers=tenant_key)
    assert done.status_code == 200 and done.json()["status"] == "succeeded"


def test_a_row_the_models_template_cannot_render_is_a_422_naming_line_and_field(
    live_server, tenant_key, tmp_path, monkeypatch
):
    from app.core.settings import get_settings

    phi3 = tmp_path / "phi3-tokenizer"
    family_tokenizer("phi3").save_pretrained(phi3)  # a tokenizer is all a preview loads
    monkeypatch.setattr(get_settings(), "allowed_models", [*get_settings().allowed_models, str(phi3)])
    plain = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    file_id = upload(live_server, tenant_key, [plain, CHAT_ROW])
    r = post_while_the_worker_runs(live_server, tenant_key, file_id, {"model": "phi3-tokenizer"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_training_row" and error["param"] == "tools"
    assert error["errors"] == [{"line": 2, "field": "tools", "message": error["message"]}]
    assert "line 2" in error["message"] and "no tool support" in error["message"]

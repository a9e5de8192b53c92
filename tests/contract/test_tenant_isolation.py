"""Two tenants, every route: generated from the live app's OpenAPI schema, not from a hand-kept list.

Tenant A owns one object of every kind (file, job, sweep, comparison). With tenant B's key, every operation
whose path takes an object id answers exactly as it does for an id that does not exist (404, same code,
same message but for the id): B cannot even learn that A's object exists. Every list B reads leaves out
A's objects, and every body field that names an object (training_file, job_ids, ...) is a 404 too.
A new route that takes an id fails this test until it is covered: coverage is counted from the schema.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from tests.helpers.factories import finished_job, make_endpoint, store_adapter

# Path parameters that name a tenant's object, and a well-formed id of that kind that nobody owns.
OWNED = {
    "file_id": "file-000000000000000000000000",
    "job_id": "ftjob-000000000000000000000000",
    "sweep_id": "sweep-000000000000000000000000",
    "comparison_id": "cmp-000000000000000000000000",
    "webhook_endpoint_id": "webhook-000000000000000000000000",
    "preview_id": "preview-000000000000000000000000",
}
# Operations without a tenant's object: health, and the catalogues (base models, webhook event types) shared by all.
SHARED = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model_id}"),
    ("get", "/v1/webhook_event_types"),
}
# Operations whose body names objects, with a body naming A's (filled in by the test).
BODY_IDS = {
    ("post", "/v1/fine_tuning/jobs"): lambda a: {"model": "stories260k", "training_file": a["file_id"]},
    ("post", "/v1/sweeps"): lambda a: {"training_file": a["file_id"], "base": {"model": "stories260k"}},
    ("post", "/v1/comparisons"): lambda a: {"job_ids": [a["job_id"]], "prompts": ["hello"]},
}
UPLOAD = ("post", "/v1/files")  # creates; takes no id


def operations():
    from app.main import app

    for path, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            names = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            yield method, path, names


@pytest.fixture
def a_objects(client, auth, db_session, acme, archive, monkeypatch):
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "preview_wait_s", 0.0)  # no preview worker here: queued is enough
    rows = "".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(8))
    r = client.post(
        "/v1/files",
        headers=auth,
        files={"file": ("secret-a.jsonl", io.BytesIO(rows.encode()))},
        data={"purpose": "fine-tune"},
    )
    assert r.status_code == 200, r.text
    from app.core.tables import File

    file = db_session.get(File, r.json()["id"])
    job = finished_job(db_session, acme, file, base={"eval_loss": 2.0}, tuned={"eval_loss": 1.0}, rows=2)
    store_adapter(db_session, job, archive)
    sweep = client.post("/v1/sweeps", headers=auth, json=BODY_IDS[("post", "/v1/sweeps")]({"file_id": file.id}))
    assert sweep.status_code == 200, sweep.text
    cmp = client.post("/v1/comparisons", headers=auth, json={"job_ids": [job.id], "prompts": ["hello"]})
    assert cmp.status_code == 200, cmp.text
    endpoint = make_endpoint(db_session, acme)
    preview = client.post(f"/v1/files/{file.id}/preview", headers=auth, json={"model": "stories260k"})
    assert preview.status_code == 202, preview.text
    return {
        "file_id": file.id,
        "job_id": job.id,
        "sweep_id": sweep.json()["id"],
        "comparison_id": cmp.json()["id"],
        "webhook_endpoint_id": endpoint.id,
        "preview_id": preview.json()["id"],
    }


def call(client, method: str, path: str, headers: dict, ids: dict, body=None):
    url = path
    for name, value in ids.items():
        url = url.replace("{" + name + "}", value)
    kwargs = {"headers": headers}
    if method in ("post", "put", "patch"):
        kwargs["json"] = body if body is not None else {}
    return client.request(method.upper(), url, **kwargs)


def scrub(response, ids: dict) -> str:
    text = response.text
    for value in ids.values():
        text = text.replace(value, "<id>")
    return re.sub(r"(file|ftjob|sweep|cmp|webhook|preview)-[0-9a-f]{24}", "<id>", text)


def test_every_id_route_hides_another_tenants_objects_exactly_like_missing_ones(client, auth, other_auth, a_objects):
    covered, id_ops = [], []
    # deletes last, so that A's own delete (which succeeds) leaves the object for every other operation
    for method, path, names in sorted(operations(), key=lambda op: op[0] == "delete"):
        if (method, path) in SHARED or (method, path) == UPLOAD or (method, path) in BODY_IDS:
            continue
        owned = [n for n in names if n in OWNED]
        unknown = [n for n in names if n not in OWNED]
        assert not unknown, f"{method.upper()} {path} takes {unknown}: add it to OWNED or SHARED in this test"
        if not owned:
            continue  # a list: checked below
        id_ops.append((method, path))
        # B first: A's call then also proves that B's changed nothing (B's delete did not delete)
        theirs = call(client, method, path, other_auth, {n: a_objects[n] for n in owned})
        missing = call(client, method, path, other_auth, {n: OWNED[n] for n in owned})
        mine = call(client, method, path, auth, {n: a_objects[n] for n in owned})
        assert mine.status_code != 404, f"A's own call must find it: {method.upper()} {path}: {mine.text}"
        assert theirs.status_code == 404, f"{method.upper()} {path} with B's key: {theirs.status_code} {theirs.text}"
        assert missing.status_code == 404
        assert scrub(theirs, a_objects) == scrub(missing, OWNED), f"{method.upper()} {path} tells them apart"
        assert "secret-a" not in theirs.text
        covered.append((method, path))
    coverage = len(covered) / len(id_ops)
    print(f"\n[isolation] {len(covered)} of {len(id_ops)} id-taking operations covered ({coverage:.0%})")
    assert coverage == 1.0 and len(id_ops) >= 20


def test_lists_and_body_ids_never_show_another_tenants_objects(client, auth, other_auth, a_objects):
    lists = [
        (m, p)
        for m, p, names in operations()
        if m == "get" and not names and (m, p) not in SHARED and p.startswith("/v1/")
    ]
    assert {p for _, p in lists} >= {"/v1/files", "/v1/fine_tuning/jobs", "/v1/sweeps", "/v1/comparisons"}
    for _method, path in lists:
        mine = client.get(path, headers=auth)
        theirs = client.get(path, headers=other_auth)
        assert mine.status_code == theirs.status_code == 200, (path, theirs.text)
        assert any(v in mine.text for v in a_objects.values()), f"A's list {path} shows A's objects"
        assert not any(v in theirs.text for v in a_objects.values()) and "secret-a" not in theirs.text, path
    for (method, path), make_body in BODY_IDS.items():
        r = call(client, method, path, other_auth, {}, make_body(a_objects))
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["param"] in ("training_file", "job_ids[0]"), r.text
    print(f"\n[isolation] {len(lists)} lists and {len(BODY_IDS)} id-taking bodies checked with the other key")

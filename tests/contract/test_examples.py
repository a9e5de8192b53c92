"""Every request body's example in the OpenAPI document is posted as the Swagger UI would send it, with the ids
it names ("file-abc123", "ftjob-abc123") replaced by ones this test made first: each answer is the documented
success or one of the operation's documented errors, and the examples of the quick-start's own path (a job, a
sweep) succeed as they are."""

from __future__ import annotations

import json

from tests.conftest import DATASETS
from tests.helpers.factories import make_endpoint

MUST_SUCCEED = {("post", "/v1/fine_tuning/jobs"), ("post", "/v1/sweeps")}


def resolve(doc: dict, schema: dict) -> dict:
    """The schema a body's $ref names, through an optional body's anyOf [ref, null]."""
    refs = [s for s in schema.get("anyOf", []) if "$ref" in s]
    schema = refs[0] if refs and "$ref" not in schema else schema
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def test_every_body_example_runs_against_the_quick_start_service(client, auth, db_session, acme):
    rows = "".join((DATASETS / "wikisql" / "train.jsonl").read_text().splitlines(keepends=True)[:40])
    upload = client.post(
        "/v1/files", headers=auth, files={"file": ("train.jsonl", rows.encode())}, data={"purpose": "fine-tune"}
    )
    assert upload.status_code == 200, upload.text
    endpoint = make_endpoint(db_session, acme)
    ids = {"file-abc123": upload.json()["id"]}
    doc = client.get("/openapi.json").json()
    posted = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json")
            if not content:
                continue
            examples = resolve(doc, content["schema"]).get("examples", [])
            assert examples, f"{method.upper()} {path} has no example"
            for example in examples:
                body = json.loads(json.dumps(example).replace("file-abc123", ids["file-abc123"]))
                if "ftjob-abc123" in json.dumps(body):
                    body = json.loads(json.dumps(body).replace("ftjob-abc123", ids.get("ftjob-abc123", "ftjob-none")))
                url = path.replace("{webhook_endpoint_id}", endpoint.id)
                r = client.request(method, url, headers=auth, json=body)
                documented = set(op["responses"]) | {"422"} if "422" in op["responses"] else set(op["responses"])
                assert str(r.status_code) in documented, (method, path, r.status_code, r.text[:300], documented)
                if (method, path) in MUST_SUCCEED:
                    assert r.status_code == 200, (path, r.text)
                if (method, path) == ("post", "/v1/fine_tuning/jobs"):
                    ids["ftjob-abc123"] = r.json()["id"]
                posted.append(f"{method.upper()} {path} -> {r.status_code}")
    print(f"\n[examples] {len(posted)} examples posted: " + "; ".join(posted))
    assert len(posted) >= 7

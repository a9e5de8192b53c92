"""The examples of the OpenAPI document run, and show what the service really answers.

Request bodies and query parameters are sent as the Swagger UI would send them, with the ids they name
("file-abc123", "ftjob-abc123") replaced by ones this test made first: each answer is the documented success or
one of the operation's documented errors, and the examples of the quick-start's own path (a job, a sweep)
succeed as they are. The response examples (a job, a file, a sweep, an error) are valid instances of their
models and have the shape, key for key, of the answers the same requests got.
"""

from __future__ import annotations

import json

from app.api.schemas import ErrorResponse
from app.files.schemas import FilePublic
from app.jobs.schemas import JobPublic
from app.sweeps.schemas import SweepPublic
from tests.conftest import DATASETS
from tests.helpers.factories import make_endpoint

MUST_SUCCEED = {("post", "/v1/fine_tuning/jobs"), ("post", "/v1/sweeps")}
# Query parameters a newcomer reaches for first: each has an example or a default the Swagger UI fills in
IMPORTANT_QUERY_PARAMETERS = {"limit", "status", "purpose", "metadata"}
# filters whose example finds the file and the job that the body examples make (a job's status varies)
FINDS_WHAT_THE_EXAMPLES_MADE = {"purpose", "metadata"}


def resolve(doc: dict, schema: dict) -> dict:
    """The schema a body's $ref names, through an optional body's anyOf [ref, null]."""
    refs = [s for s in schema.get("anyOf", []) if "$ref" in s]
    schema = refs[0] if refs and "$ref" not in schema else schema
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def with_ids(value, ids: dict[str, str]):
    """`value` with every placeholder id of the examples replaced by a real one of this test's."""
    text = json.dumps(value)
    for placeholder, real in ids.items():
        text = text.replace(placeholder, real)
    return json.loads(text)


def documented(op: dict) -> set[str]:
    return set(op["responses"])


def upload(client, auth) -> dict:
    rows = "".join((DATASETS / "wikisql" / "train.jsonl").read_text().splitlines(keepends=True)[:40])
    r = client.post(
        "/v1/files", headers=auth, files={"file": ("train.jsonl", rows.encode())}, data={"purpose": "fine-tune"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_every_body_example_runs_against_the_quick_start_service(client, auth, db_session, acme, monkeypatch):
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "preview_wait_s", 0.0)  # no preview worker here: its 202 is documented
    endpoint = make_endpoint(db_session, acme)
    ids = {"file-abc123": upload(client, auth)["id"], "ftjob-abc123": "ftjob-none"}
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
                url = path.replace("{webhook_endpoint_id}", endpoint.id).replace("{file_id}", ids["file-abc123"])
                r = client.request(method, url, headers=auth, json=with_ids(example, ids))
                assert str(r.status_code) in documented(op), (method, path, r.status_code, r.text[:300])
                if (method, path) in MUST_SUCCEED:
                    assert r.status_code == 200, (path, r.text)
                if (method, path) == ("post", "/v1/fine_tuning/jobs"):
                    ids["ftjob-abc123"] = r.json()["id"]
                posted.append(f"{method.upper()} {path} -> {r.status_code}")
    print(f"\n[examples] {len(posted)} body examples posted: " + "; ".join(posted))
    assert len(posted) >= 8


def test_every_query_parameter_example_runs(client, auth, db_session, acme):
    doc = client.get("/openapi.json").json()
    file_id = upload(client, auth)["id"]
    job = client.post(
        "/v1/fine_tuning/jobs",
        headers=auth,
        json=with_ids(doc["components"]["schemas"]["JobCreate"]["examples"][0], {"file-abc123": file_id}),
    )
    assert job.status_code == 200, job.text
    path_ids = {
        "{job_id}": job.json()["id"],
        "{file_id}": file_id,
        "{webhook_endpoint_id}": make_endpoint(db_session, acme).id,
    }
    ids = {"file-abc123": file_id, "ftjob-abc123": job.json()["id"]}
    sent = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            for param in (p for p in op.get("parameters", []) if p["in"] == "query"):
                if param["name"] in IMPORTANT_QUERY_PARAMETERS:
                    has_default = "default" in param.get("schema", {})
                    assert param.get("examples") or has_default, (
                        f"{method.upper()} {path}: `{param['name']}` has no example"
                    )
                for name, example in (param.get("examples") or {}).items():
                    url = path
                    for placeholder, real in path_ids.items():
                        url = url.replace(placeholder, real)
                    assert "{" not in url, f"no id for {url}: add one to path_ids"
                    value = with_ids(example["value"], ids)
                    # a deepObject parameter goes as name[key]=value, as the Swagger UI and the openai client send it
                    query = (
                        {f"{param['name']}[{k}]": v for k, v in value.items()}
                        if param.get("style") == "deepObject"
                        else {param["name"]: value}
                    )
                    r = client.request(method, url, headers=auth, params=query)
                    assert str(r.status_code) in documented(op), (method, path, query, r.status_code, r.text[:300])
                    if param["name"] in FINDS_WHAT_THE_EXAMPLES_MADE:
                        assert r.status_code == 200 and r.json()["data"], (path, query, "the example finds nothing")
                    sent.append(f"{method.upper()} {path}?{param['name']} ({name}) -> {r.status_code}")
    print(f"\n[examples] {len(sent)} query parameter examples sent: " + "; ".join(sent))
    assert len(sent) >= 5


def same_shape(example, answer) -> bool:
    """The same keys all the way down (a list by its first item), whatever the values: what an example must have
    in common with a real answer. A null on either side (a queued job's `data`) matches anything."""
    if example is None or answer is None:
        return True
    if isinstance(example, dict) or isinstance(answer, dict):
        return (
            isinstance(example, dict)
            and isinstance(answer, dict)
            and example.keys() == answer.keys()
            and all(same_shape(example[k], answer[k]) for k in example)
        )
    if isinstance(example, list) and isinstance(answer, list) and example and answer:
        return same_shape(example[0], answer[0])
    return True


def test_response_examples_are_real_answers_shapes(client, auth):
    doc = client.get("/openapi.json").json()
    file = upload(client, auth)
    ids = {"file-abc123": file["id"]}
    job = client.post(
        "/v1/fine_tuning/jobs",
        headers=auth,
        json=with_ids(doc["components"]["schemas"]["JobCreate"]["examples"][0], ids),
    )
    sweep = client.post(
        "/v1/sweeps", headers=auth, json=with_ids(doc["components"]["schemas"]["SweepCreate"]["examples"][0], ids)
    )
    error = client.post("/v1/fine_tuning/jobs", headers=auth, json={"model": "nope", "training_file": file["id"]})
    assert (job.status_code, sweep.status_code, error.status_code) == (200, 200, 400)
    answers = {JobPublic: job.json(), FilePublic: file, SweepPublic: sweep.json(), ErrorResponse: error.json()}
    for model, answer in answers.items():
        examples = doc["components"]["schemas"][model.__name__].get("examples")
        assert examples, f"{model.__name__} has no example"
        for example in examples:
            model.model_validate(example)
            assert same_shape(example, answer), f"{model.__name__}'s example is not shaped as the answer {answer}"
    # the error example is the very answer to a job on a model this server does not serve
    assert doc["components"]["schemas"]["ErrorResponse"]["examples"][0] == error.json()

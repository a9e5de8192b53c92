"""Hostile input to every route, generated from the live app's OpenAPI document as the isolation test is: each
class of bad input that once produced a 500 (issue 14) is sent, with and without a key, to every operation
that takes a JSON body, a query parameter or a header, and nothing answers 5xx. Each class is a 4xx that
names the field, and the whole sweep is fast: no input costs work proportional to what it claims to hold."""

from __future__ import annotations

import time

import pytest

DEPTH = 100_000  # past json.loads' recursion limit: a RecursionError once escaped the NUL filter
HUGE = "9" * 5_000  # past Python's 4,300-digit integer-string limit: ValueError once escaped json.loads
ARABIC_DIGITS = "\u0661\u0662\u0663"  # str.isdigit() says yes, int() reads 123: a second spelling of a number
BODIES = {
    "deep nesting": b"[" * DEPTH + b"]" * DEPTH,
    "deep object": b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    "huge number": b'{"model": "m", "training_file": ' + HUGE.encode() + b"}",
    "NUL": b'{"model": "m\\u0000", "training_file": "f", "suffix": "a\\u0000b"}',
}
MEDIA_TYPES = ["application/json", "Application/JSON", "application/merge-patch+json", None]
QUERY_VALUES = {"huge number": HUGE, "non-ASCII digits": ARABIC_DIGITS, "NUL": "a\x00b", "long": "x" * 20_000}
HEADER_VALUES = {"huge number": "ftevent-" + HUGE, "non-ASCII digits": "ftevent-123", "long": "x" * 8_000}
IDS = {
    "file_id": "file-000000000000000000000000",
    "job_id": "ftjob-000000000000000000000000",
    "sweep_id": "sweep-000000000000000000000000",
    "comparison_id": "cmp-000000000000000000000000",
    "webhook_endpoint_id": "webhook-000000000000000000000000",
}


def operations(client):
    doc = client.get("/openapi.json").json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                names = [p["name"] for p in op.get("parameters", []) + item.get("parameters", []) if p["in"] == "path"]
                yield method, path.format(**{name: IDS.get(name, "x") for name in names}), op


def send(client, method, path, **kw):
    r = client.request(method, path, **kw)
    assert r.status_code < 500, (method, path, kw.get("headers"), r.status_code, r.text[:300])
    return r


@pytest.mark.parametrize("keyed", [False, True], ids=["no key", "with a key"])
def test_no_bad_body_query_or_header_is_a_500_on_any_route(client, auth, keyed):
    started = time.monotonic()
    headers = auth if keyed else {}
    sent = 0
    for method, path, op in list(operations(client)):
        if "requestBody" in op and "application/json" in op["requestBody"].get("content", {}):
            for name, body in BODIES.items():
                for media in MEDIA_TYPES:
                    h = {**headers, **({"Content-Type": media} if media else {})}
                    r = send(client, method, path, content=body, headers=h)
                    sent += 1
                    if name != "NUL" or keyed:  # the guard answers before the key is looked at
                        assert r.status_code in (400, 401, 404, 405, 413, 422), (name, media, method, path, r.text)
        for param in op.get("parameters", []):
            values = QUERY_VALUES if param["in"] == "query" else HEADER_VALUES if param["in"] == "header" else {}
            for value in values.values():
                if param["in"] == "query":
                    send(client, method, path, params={param["name"]: value}, headers=headers)
                else:
                    send(client, method, path, headers={**headers, param["name"]: value.encode().decode("latin-1")})
                sent += 1
    took = time.monotonic() - started
    print(f"\n[hostile] {sent} bad requests ({'with' if keyed else 'without'} a key), no 5xx, in {took:.1f} s")
    assert sent > 200


ODD_MEDIA = ["Application/JSON", "application/merge-patch+json", "APPLICATION/json; charset=utf-8"]


@pytest.mark.parametrize("media", ODD_MEDIA)
def test_the_nul_check_reads_every_body_parsed_as_json(client, auth, media, acme, train_file):
    body = b'{"model": "stories260k", "training_file": "%s", "suffix": "a\\u0000b"}' % train_file.id.encode()
    r = client.post("/v1/fine_tuning/jobs", content=body, headers={**auth, "Content-Type": media})
    assert r.status_code == 400 and r.json()["error"]["param"] == "suffix", r.text


def test_a_huge_number_or_deep_nesting_is_a_400_naming_the_body(client, auth):
    for body, words in ((BODIES["huge number"], "too large"), (BODIES["deep nesting"], "nested deeper")):
        r = client.post("/v1/fine_tuning/jobs", content=body, headers={**auth, "Content-Type": "application/json"})
        assert r.status_code == 400 and words in r.json()["error"]["message"], r.text
    too_big = b'{"model": "' + b"m" * (5 * 1024 * 1024) + b'"}'
    r = client.post("/v1/fine_tuning/jobs", content=too_big, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413, r.text


def test_an_event_id_of_5000_digits_is_refused_or_ignored(client, db_session, auth, acme, train_file):
    from app.jobs.event_stream import resume_point
    from tests.helpers.factories import make_job

    job = make_job(db_session, acme, train_file)
    r = client.get(f"/v1/fine_tuning/jobs/{job.id}/events", params={"after": "ftevent-" + HUGE}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["param"] == "after", r.text
    assert resume_point(None, "ftevent-" + HUGE) == 0  # a Last-Event-ID that is not one of ours is ignored
    assert resume_point(None, "ftevent-" + ARABIC_DIGITS) == 0

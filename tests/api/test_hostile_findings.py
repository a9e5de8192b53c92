"""Each finding of the hostile review (issue 14) as a test that failed before its fix, with the figure it prints:
a sweep grid counted before it is built, Parquet files bounded by their metadata, metadata of OpenAI's sizes,
IPv6 forms that embed a private IPv4 address, port 0, sweep-page tokens spelled only one way, page links that
ignore the Host header, and invalid keys rate-limited per client address."""

from __future__ import annotations

import io
import time
import tracemalloc
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ENDPOINTS = "/v1/webhook_endpoints"


def test_a_grid_is_counted_before_it_is_built(client, auth, train_file):
    grid = {f"training.{k}": list(range(1, 65)) for k in ("learning_rate", "warmup_ratio", "max_seq_length")}
    grid["adapter.r"] = list(range(1, 65))  # 64^4 = 16.7 million combinations
    body = {"training_file": train_file.id, "base": {"model": "stories260k"}, "grid": grid}
    tracemalloc.start()
    started = time.monotonic()
    r = client.post("/v1/sweeps", headers=auth, json=body)
    took, (_, peak) = time.monotonic() - started, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"\n[hostile] grid of 4 keys x 64 values: {r.status_code} in {took * 1000:.0f} ms, peak {peak / 2**20:.1f} MiB"
    )
    assert r.status_code == 400 and "16777216 candidates" in r.json()["error"]["message"], r.text
    assert took < 1.0 and peak < 64 * 2**20  # before: 3.1 s and 1.4 GB


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", use_dictionary=True)
    return buf.getvalue()


def upload(client, auth, name: str, data: bytes):
    started = time.monotonic()
    r = client.post("/v1/files", headers=auth, files={"file": (name, data)}, data={"purpose": "fine-tune"})
    return r, time.monotonic() - started


def test_a_small_parquet_file_of_millions_of_rows_is_refused_from_its_metadata(client, auth):
    rows = 3_000_000
    codes = pa.array([0] * rows, type=pa.int32())
    column = pa.DictionaryArray.from_arrays(codes, pa.array(["the same prompt"]))
    table = pa.table({"prompt": column, "completion": column})
    data = parquet_bytes(table)
    r, took = upload(client, auth, "many.parquet", data)
    print(f"\n[hostile] {len(data) / 1024:.0f} KB Parquet of {rows:,} rows: {r.status_code} in {took:.2f} s")
    assert r.status_code == 422 and "3,000,000 rows" in r.text, r.text
    assert took < 5.0  # before: 50 s inside the request, and stored


def test_a_parquet_file_that_decodes_to_far_more_than_it_stores_is_refused(client, auth):
    table = pa.table({"prompt": ["a" * (30 * 1024 * 1024)], "completion": ["b"]})
    data = parquet_bytes(table)
    r, took = upload(client, auth, "bomb.parquet", data)
    print(f"\n[hostile] {len(data) / 1024:.1f} KB Parquet decoding to 30 MB: {r.status_code} in {took:.2f} s")
    assert r.status_code == 422 and "decodes to" in r.text, r.text


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k" * 65: "v"}, "metadata"),
        ({"k": "v" * 513}, "metadata.k"),
        ({"k": "v" * 200_000}, "metadata.k"),
    ],
)
def test_metadata_has_openais_limits(client, auth, train_file, metadata, param):
    body = {"model": "stories260k", "training_file": train_file.id, "metadata": metadata}
    r = client.post("/v1/fine_tuning/jobs", headers=auth, json=body)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith(param), r.text


@pytest.mark.parametrize(
    "url",
    [
        "http://[::7f00:1]/hook",  # IPv4-compatible 127.0.0.1
        "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of the metadata service 169.254.169.254
        "http://[2002:7f00:1::]/hook",  # 6to4 of 127.0.0.1
        "http://[::ffff:10.0.0.1]/hook",  # IPv4-mapped private
        "https://example.com:0/hook",  # port 0
    ],
)
def test_webhook_addresses_that_embed_a_private_ipv4_or_port_0_are_refused(client, auth, url):
    r = client.post(ENDPOINTS, headers=auth, json={"name": "x", "url": url, "event_types": ["fine_tuning.job.failed"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "url", r.text


def test_a_sweep_page_token_is_accepted_only_as_it_was_made(monkeypatch):
    from app.sweeps import share_links

    token = share_links.make_token("sweep", "sweep-1")
    expires, mac = token.split(".")
    assert share_links.check_token("sweep", "sweep-1", token)
    for forged in (
        f"0{expires}.{mac}",  # leading zero
        f"{expires.translate(str.maketrans('0123456789', '٠١٢٣٤٥٦٧٨٩'))}.{mac}",  # Arabic-Indic digits
        f"{'9' * 5000}.{mac}",  # past the integer-string limit
        f"{expires}.{mac[:-1]}é",  # a non-ASCII MAC: compare_digest raised TypeError
        f"{expires}.{mac.upper()}",
    ):
        assert not share_links.check_token("sweep", "sweep-1", forged), forged


def test_malformed_page_tokens_are_401_not_500(client):
    for token in ("1.é", "٣٣٣٣٣٣٣٣٣٣.abc", "9" * 5000 + ".abc", "0.0"):
        r = client.get("/v1/sweeps/sweep-000000000000000000000000/page", params={"token": token})
        assert r.status_code in (401, 404), (token, r.status_code, r.text[:200])


def test_page_links_come_from_the_configured_url_not_the_host_header(client, auth, train_file, monkeypatch):
    from app.core.settings import get_settings

    body = {"training_file": train_file.id, "base": {"model": "stories260k"}, "candidates": [{"name": "a"}]}
    sweep = client.post("/v1/sweeps", headers={**auth, "Host": "evil.example"}, json=body).json()
    assert "evil.example" not in sweep["page_url"] and sweep["page_url"].startswith("/v1/sweeps/")
    monkeypatch.setattr(get_settings(), "public_url", "https://ftaas.example.com/")
    got = client.get(f"/v1/sweeps/{sweep['id']}", headers={**auth, "Host": "evil.example"}).json()
    assert got["page_url"].startswith(f"https://ftaas.example.com/v1/sweeps/{sweep['id']}/page?token=")


def test_invalid_keys_from_one_address_are_rate_limited(client, monkeypatch):
    from app.core.settings import get_settings

    monkeypatch.setattr(get_settings(), "auth_failures_per_minute", 5)
    address = f"203.0.113.7-{uuid.uuid4().hex[:8]}"  # a counter of its own, whatever else ran this minute
    monkeypatch.setattr("app.api.deps.client_address", lambda _request: address)
    wrong = [{"Authorization": f"Bearer ftaas-wrong-{i}"} for i in range(8)]
    statuses = [client.get("/v1/files", headers=headers).status_code for headers in wrong]
    print(f"\n[hostile] 8 invalid keys from one address: {statuses}")
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429


def test_numbers_past_the_integer_string_limit_in_rows_and_form_fields_are_4xx_naming_them(client, auth):
    huge = "9" * 5000
    row = b'{"prompt": "a", "completion": "b", "n": ' + huge.encode() + b"}\n"
    r, _ = upload(client, auth, "rows.jsonl", b'{"prompt": "a", "completion": "b"}\n' + row)
    assert r.status_code == 422 and r.json()["error"]["errors"][0]["line"] == 2, r.text
    r = client.post(
        "/v1/files",
        headers=auth,
        files={"file": ("rows.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
        data={"purpose": "fine-tune", "column_mapping": '{"q": ' + huge + "}"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "column_mapping", r.text
    r = client.post(
        "/v1/files",
        headers=auth,
        files={"file": ("rows.jsonl", b'{"prompt": "a", "completion": "b"}\n')},
        data={"purpose": "fine-tune", "column_mapping": "[" * 100_000},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "column_mapping", r.text

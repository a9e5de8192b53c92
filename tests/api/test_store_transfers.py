"""Uploads and downloads through an S3-compatible store (moto's server, in its own process), as a fleet runs them:
an upload becomes an object (and nothing when the store refuses it), a download streams from the store whole or by
Range, or redirects to a presigned URL when configured, and a damaged object is never served as a good one."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import pytest

from app.api.downloads import ChecksumMismatch
from app.core.object_store import get_store
from app.core.settings import get_settings
from app.core.storage import upload_key
from tests.helpers.factories import make_file_row
from tests.helpers.files import PC_JSONL, file_row_count, upload
from tests.helpers.s3_server import CREDENTIALS, s3_server


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3, monkeypatch):
    """The service's store is a fresh bucket of the S3 server for this test (get_store() is made from settings)."""
    name = f"api-{uuid.uuid4().hex[:10]}"
    s3.make_bucket(name)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    settings = get_settings()
    monkeypatch.setattr(settings, "store_url", f"s3://{name}/ftaas")
    monkeypatch.setattr(settings, "s3_endpoint", s3.endpoint)
    monkeypatch.setattr(settings, "store_retry_s", 3.0)
    get_store.cache_clear()
    yield name
    get_store.cache_clear()


def uploaded(client, auth, content: bytes = PC_JSONL) -> dict:
    r = upload(client, auth, "train.jsonl", content)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_upload_is_an_object_and_downloads_whole_or_by_range(client, auth, bucket):
    content = b"".join(b'{"prompt": "q%d", "completion": "a%d"}\n' % (i, i) for i in range(300))
    f = uploaded(client, auth, content)
    key = upload_key(f["id"])
    assert get_store().url.startswith(f"s3://{bucket}")
    assert b"".join(get_store().read(key)) == content  # the object, byte for byte
    r = client.get(f"/v1/files/{f['id']}/content", headers=auth)
    assert r.status_code == 200 and r.content == content
    assert r.headers["x-checksum-sha256"] == hashlib.sha256(content).hexdigest()
    r = client.get(f"/v1/files/{f['id']}/content", headers={**auth, "Range": "bytes=100-1099"})
    assert r.status_code == 206 and r.content == content[100:1100]
    assert r.headers["content-range"] == f"bytes 100-1099/{len(content)}"
    r = client.get(f"/v1/files/{f['id']}/content", headers={**auth, "Range": "bytes=0-9,-10"})
    assert r.status_code == 206 and r.headers["content-type"].startswith("multipart/byteranges")
    assert content[:10] in r.content and content[-10:] in r.content
    r = client.get(f"/v1/files/{f['id']}/content", headers={**auth, "Range": f"bytes={len(content) + 5}-"})
    assert r.status_code == 416 and r.json()["error"]["code"] == "range_not_satisfiable"
    assert client.delete(f"/v1/files/{f['id']}", headers=auth).status_code == 200
    assert get_store().size(key) is None  # the object went with the file


def test_downloads_redirect_to_a_presigned_url_when_configured(client, auth, bucket, monkeypatch):
    f = uploaded(client, auth)
    monkeypatch.setattr(get_settings(), "download_redirect_s", 60)
    r = client.get(f"/v1/files/{f['id']}/content", headers=auth, follow_redirects=False)
    assert r.status_code == 307, r.text
    assert r.headers["x-checksum-sha256"] == hashlib.sha256(PC_JSONL).hexdigest()
    location = r.headers["location"]
    assert bucket in location and "X-Amz-Signature" in location
    assert httpx.get(location).content == PC_JSONL  # anyone with the URL, no API key, for its lifetime


def test_a_damaged_object_is_never_served_as_a_good_one(client, auth, bucket):
    f = uploaded(client, auth)
    key = upload_key(f["id"])
    flipped = bytes([PC_JSONL[0] ^ 1]) + PC_JSONL[1:]  # same size, one bit off
    get_store().put_stream(key, [flipped])
    with pytest.raises(ChecksumMismatch):  # the transfer is cut before its last byte: the client sees it fail
        client.get(f"/v1/files/{f['id']}/content", headers=auth)
    get_store().put_stream(key, [PC_JSONL + b"\n"])  # another size: refused before a byte is sent
    r = client.get(f"/v1/files/{f['id']}/content", headers=auth)
    assert r.status_code == 500 and r.json()["error"]["code"] == "stored_object_damaged", r.text
    get_store().delete([key])
    r = client.get(f"/v1/files/{f['id']}/content", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["code"] == "file_content_missing"


def test_a_store_out_of_reach_is_a_503_that_says_why_and_an_upload_keeps_nothing(
    client, auth, acme, db_session, monkeypatch
):
    from tests.helpers.e2e_service import free_port

    settings = get_settings()
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(settings, "store_url", "s3://the-fleet-bucket")
    monkeypatch.setattr(settings, "s3_endpoint", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setattr(settings, "store_retry_s", 2.0)
    get_store.cache_clear()
    try:
        rows = file_row_count(db_session)
        uploaded = upload(client, auth, "train.jsonl", PC_JSONL)
        listed = make_file_row(db_session, acme)
        downloaded = client.get(f"/v1/files/{listed.id}/content", headers=auth)
    finally:
        get_store.cache_clear()
    for r in (uploaded, downloaded):
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "store_unavailable" and "the-fleet-bucket" in error["message"]
    assert file_row_count(db_session) == rows + 1  # the listed row only: the refused upload kept none

"""app/core/object_store.py on both backends, the local folder and a real S3-protocol server (moto's, in its own
process): files and streams in and out whole (multipart past 5 MB), ranged reads, folders, missing keys, presigned
URLs, and a readiness check that says what is wrong within seconds."""

from __future__ import annotations

import hashlib
import os
import time
import uuid

import httpx
import pytest

from app.core.object_store import ObjectStore, StoreError
from tests.helpers.s3_server import CREDENTIALS, s3_server

MB = 1024 * 1024


@pytest.fixture(scope="module")
def s3():
    with s3_server() as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        return ObjectStore((tmp_path / "store").as_uri())
    server = request.getfixturevalue("s3")
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    server.make_bucket(bucket)
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    return ObjectStore(f"s3://{bucket}/ftaas", endpoint=server.endpoint, retry_s=5)


def test_a_file_and_a_stream_go_in_and_come_out_whole(store, tmp_path):
    data = os.urandom(12 * MB + 123)  # past 5 MB: a multipart upload, 3 parts
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    store.put_file("files/big", src)
    assert store.size("files/big") == len(data)
    got = store.get_file("files/big", tmp_path / "out" / "big.bin")
    assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not [p for p in got.parent.iterdir() if p.name.startswith(".")]  # no temporary file left

    store.put_stream("files/streamed", (data[i : i + MB] for i in range(0, len(data), MB)))
    assert b"".join(store.read("files/streamed")) == data
    chunks = list(store.read("files/streamed"))
    assert max(len(c) for c in chunks) <= 8 * MB  # handed back in pieces, not as one buffer


def test_ranged_reads(store):
    data = bytes(range(256)) * 40_000  # 10 MB
    store.put_stream("r/obj", [data])
    assert b"".join(store.read("r/obj", 100, 200)) == data[100:200]
    assert b"".join(store.read("r/obj", 6 * MB)) == data[6 * MB :]
    assert b"".join(store.read("r/obj", len(data) - 1, len(data))) == data[-1:]


def test_folders_list_and_delete(store, tmp_path):
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.safetensors").write_bytes(b"a" * 10)
    (folder / "sub" / "state.pt").write_bytes(b"b" * 20)
    keys = store.put_folder("jobs/j1/checkpoints/step-3", folder)
    assert keys == ["jobs/j1/checkpoints/step-3/a.safetensors", "jobs/j1/checkpoints/step-3/sub/state.pt"]
    assert store.list("jobs/j1") == keys
    assert store.list("jobs/j2") == []
    out = store.get_folder("jobs/j1/checkpoints/step-3", tmp_path / "back")
    assert sorted(p.relative_to(tmp_path / "back").as_posix() for p in out) == ["a.safetensors", "sub/state.pt"]
    assert (tmp_path / "back" / "sub" / "state.pt").read_bytes() == b"b" * 20
    assert store.delete_prefix("jobs/j1") == 2
    assert store.list("jobs/j1") == []


def test_a_missing_key(store, tmp_path):
    assert store.size("nope") is None
    with pytest.raises(FileNotFoundError):
        b"".join(store.read("nope"))
    with pytest.raises(FileNotFoundError):
        store.get_file("nope", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_presigned_urls_for_the_object_store_only(store):
    store.put_stream("p/obj", [b"hello"])
    url = store.presigned_get("p/obj", 60)
    if store.is_local:
        assert url is None
    else:
        assert httpx.get(url, timeout=10).content == b"hello"


def test_readiness_names_the_problem_quickly(s3, tmp_path, monkeypatch):
    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    s3.make_bucket(bucket)
    ObjectStore(f"s3://{bucket}", endpoint=s3.endpoint).check()
    ObjectStore((tmp_path / "fresh").as_uri()).check()

    t = time.monotonic()
    with pytest.raises(StoreError) as wrong_bucket:
        ObjectStore("s3://no-such-bucket-here", endpoint=s3.endpoint).check()
    assert "no-such-bucket-here" in str(wrong_bucket.value) and time.monotonic() - t < 15

    t = time.monotonic()
    with pytest.raises(StoreError) as down:
        ObjectStore(f"s3://{bucket}", endpoint="http://127.0.0.1:9").check()
    assert "s3://" in str(down.value) and time.monotonic() - t < 30

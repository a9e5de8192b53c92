"""Uploads against the real API process (uvicorn, as `ftaas serve` runs it), its memory read from /proc:
a 2 GiB upload streams through to the object store (the local folder, and an S3 server's multipart upload) with
the API's peak RSS flat, and a 100 MB single line is refused in bounded memory. Each prints its figures."""

from __future__ import annotations

import time
from contextlib import contextmanager

import httpx
import pytest

from tests.helpers.e2e_service import running_service
from tests.helpers.s3_server import s3_server

GIB = 1 << 30
MIB = 1 << 20
BOUNDARY = "ftaas-live-boundary"


def memory_kib(pid: int) -> dict[str, int]:
    """The peak RSS (VmHWM, since each started) of the API's processes, in KiB: the largest of uvicorn's
    supervisor and the processes it spawned, one of which took the upload."""
    import psutil

    peaks = []
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for line in open(f"/proc/{proc.pid}/status"):
            key, _, value = line.partition(":")
            if key == "VmHWM":
                peaks.append(int(value.split()[0]))
    return {"VmHWM": max(peaks), "processes": len(peaks)}


def multipart(filename: str, payload):
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from payload
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def jsonl_payload(total: int):
    line = b'{"prompt": "' + b"p" * 2000 + b'", "completion": "' + b"c" * 2000 + b'"}\n'
    block = line * (MIB // len(line))
    sent = 0
    while sent + len(block) <= total:
        yield block
        sent += len(block)
    yield line * ((total - sent) // len(line))


def post(c: httpx.Client, filename: str, payload) -> httpx.Response:
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    return c.post("/v1/files", headers=headers, content=multipart(filename, payload), timeout=600)


@contextmanager
def store_env(backend: str):
    """The service's store settings: none (the local folder) or a bucket of moto's S3 server."""
    if backend == "local":
        yield {}
        return
    with s3_server() as s3:
        s3.make_bucket("uploads")
        yield s3.env("uploads")


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_a_2_gib_upload_streams_with_the_api_memory_flat_and_a_huge_line_is_refused(backend):
    with (
        store_env(backend) as store,
        running_service(workers=0, extra_env={"FTAAS_MAX_UPLOAD_BYTES": str(3 * GIB), **store}) as svc,
    ):
        pid = svc["api_pid"]
        c = httpx.Client(base_url=svc["base"], headers={"Authorization": f"Bearer {svc['key']}"})
        warm = post(c, "warm.jsonl", jsonl_payload(MIB))  # imports and first-request allocations
        assert warm.status_code == 200, warm.text
        before = memory_kib(pid)
        t = time.monotonic()
        r = post(c, "two-gib.jsonl", jsonl_payload(2 * GIB))
        seconds = time.monotonic() - t
        big = memory_kib(pid)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["bytes"] >= 2 * GIB - 8 * 1024 and body["num_rows"] > 500_000
        assert c.delete(f"/v1/files/{body['id']}").status_code == 200
        print(
            f"\n[upload] {backend} store: {body['bytes'] / GIB:.2f} GiB, {body['num_rows']:,} rows, stored and "
            f"validated in {seconds:.0f}s; peak RSS of the largest of {big['processes']} API processes "
            f"{before['VmHWM'] / 1024:.0f} MiB before, "
            f"{big['VmHWM'] / 1024:.0f} MiB after (+{(big['VmHWM'] - before['VmHWM']) / 1024:.0f} MiB)"
        )
        assert big["VmHWM"] - before["VmHWM"] < 64 * 1024  # KiB: flat, not the file's size

        line = b'{"prompt": "' + b"x" * (100 * MIB) + b'", "completion": "y"}\n'
        r = post(c, "one-line.jsonl", iter([line[i : i + MIB] for i in range(0, len(line), MIB)]))
        after = memory_kib(pid)
        error = r.json()["error"]
        print(
            f"[upload] {backend} store: a {len(line) / MIB:.0f} MB single line: {r.status_code} "
            f"{error['message'][:90]!r}; API peak RSS +{(after['VmHWM'] - big['VmHWM']) / 1024:.0f} MiB"
        )
        assert r.status_code == 422 and error["param"] == "file"
        assert after["VmHWM"] - big["VmHWM"] < 96 * 1024  # bounded by the 32 MiB line limit, not the line

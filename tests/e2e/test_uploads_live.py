"""Uploads against the real API process (uvicorn, as `ftaas serve` runs it), its memory read from /proc:
a 2 GiB upload streams through with the API's peak RSS flat, and a 100 MB single line is refused in bounded
memory. Each prints its figures."""

from __future__ import annotations

import time

import httpx

from tests.helpers.e2e_service import running_service

GIB = 1 << 30
MIB = 1 << 20
BOUNDARY = "ftaas-live-boundary"


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak since the process started) of a process, in KiB."""
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


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


def test_a_2_gib_upload_streams_with_the_api_memory_flat_and_a_huge_line_is_refused():
    env = {"FTAAS_MAX_UPLOAD_BYTES": str(3 * GIB)}
    with running_service(workers=0, extra_env=env) as svc:
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
            f"\n[upload] {body['bytes'] / GIB:.2f} GiB, {body['num_rows']:,} rows, stored and validated in "
            f"{seconds:.0f}s; API peak RSS {before['VmHWM'] / 1024:.0f} MiB before, {big['VmHWM'] / 1024:.0f} MiB "
            f"after (+{(big['VmHWM'] - before['VmHWM']) / 1024:.0f} MiB)"
        )
        assert big["VmHWM"] - before["VmHWM"] < 64 * 1024  # KiB: flat, not the file's size

        line = b'{"prompt": "' + b"x" * (100 * MIB) + b'", "completion": "y"}\n'
        r = post(c, "one-line.jsonl", iter([line[i : i + MIB] for i in range(0, len(line), MIB)]))
        after = memory_kib(pid)
        error = r.json()["error"]
        print(
            f"[upload] a {len(line) / MIB:.0f} MB single line: {r.status_code} {error['message'][:90]!r}; "
            f"API peak RSS +{(after['VmHWM'] - big['VmHWM']) / 1024:.0f} MiB"
        )
        assert r.status_code == 422 and error["param"] == "file"
        assert after["VmHWM"] - big["VmHWM"] < 96 * 1024  # bounded by the 32 MiB line limit, not the line

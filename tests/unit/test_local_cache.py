"""app/core/local_cache.py on the local backend: a fetched copy is checked against its checksum, a pulled folder
is made equal to the store's, pushes put a folder's marker last, and the bound evicts the least recently used units
but never the caller's own or one in use."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from app.core import local_cache
from app.core.local_cache import LocalCache
from app.core.object_store import ObjectStore, StoreError


@pytest.fixture
def cache(tmp_path):
    return LocalCache(ObjectStore((tmp_path / "store").as_uri()), tmp_path / "cache", max_bytes=10_000)


def test_a_fetch_is_checked_and_fetched_again_when_the_copy_differs(cache):
    data = b"row\n" * 100
    cache.store.put_stream("files/f1", [data])
    digest = hashlib.sha256(data).hexdigest()
    path = cache.fetch("files/f1", sha256=digest)
    assert path == cache.root / "files" / "f1" and path.read_bytes() == data
    path.write_bytes(b"tampered")  # a copy that no longer matches is fetched again
    assert cache.fetch("files/f1", sha256=digest).read_bytes() == data
    cache.store.put_stream("files/f1", [data[:-1] + b"!"])  # the stored object itself is damaged
    path.unlink()
    with pytest.raises(StoreError, match="is damaged"):
        cache.fetch("files/f1", sha256=digest)
    assert not path.exists()  # never left behind as if good
    with pytest.raises(FileNotFoundError):
        cache.fetch("files/none")


def test_a_pull_mirrors_the_store_and_a_push_puts_the_marker_last(cache, monkeypatch):
    folder = cache.root / "jobs" / "j1" / "checkpoints" / "step-2"
    folder.mkdir(parents=True)
    for name in ("COMPLETE", "adapter_model.safetensors", "trainer_state.pt"):
        (folder / name).write_bytes(name.encode())
    order = []
    monkeypatch.setattr(cache.store, "put_file", lambda key, path: order.append(key.rsplit("/", 1)[1]))
    cache.push_folder(folder, last=("COMPLETE",))
    assert order[-1] == "COMPLETE" and len(order) == 3
    monkeypatch.undo()
    cache.push_folder(folder, last=("COMPLETE",))

    stale = cache.root / "jobs" / "j1" / "checkpoints" / "step-9" / "COMPLETE"  # never stored (a lost upload)
    stale.parent.mkdir(parents=True)
    stale.write_text("9")
    (folder / "trainer_state.pt").write_bytes(b"other size")  # differs from the stored one
    pulled = cache.pull("jobs/j1/checkpoints")
    assert sorted(p.relative_to(pulled).as_posix() for p in pulled.rglob("*") if p.is_file()) == [
        "step-2/COMPLETE",
        "step-2/adapter_model.safetensors",
        "step-2/trainer_state.pt",
    ]
    assert (folder / "trainer_state.pt").read_bytes() == b"trainer_state.pt"
    assert not stale.parent.exists()

    (folder / "trainer_state.pt").unlink()  # the loop pruned it: the store follows
    assert cache.drop_stored_extras(folder.parent, first=("COMPLETE",)) == 1
    assert cache.store.list("jobs/j1/checkpoints") == [
        "jobs/j1/checkpoints/step-2/COMPLETE",
        "jobs/j1/checkpoints/step-2/adapter_model.safetensors",
    ]


def test_trim_evicts_the_least_recently_used_but_never_the_kept_or_the_in_use(cache):
    now = time.time()
    ages = {"files/old": 3 * 3600, "jobs/old-job/attempt-1.log": 2 * 3600, "files/kept": 5 * 3600, "files/new": 60}
    for key, age in ages.items():
        path = cache.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 4000)
        os.utime(path, (now - age, now - age))
    freed = cache.trim(keep=["files/kept"])
    left = sorted(p.relative_to(cache.root).as_posix() for p in cache.root.rglob("*") if p.is_file())
    # 16,000 bytes against a 10,000 bound: the oldest unit not kept goes first, then the next, until under it
    assert left == ["files/kept", "files/new"] and freed == 8000
    cache.max_bytes = 0
    cache.trim()
    assert (cache.root / "files" / "new").exists()  # used a minute ago: maybe by another worker of this host
    assert local_cache.IN_USE_S >= 600


def test_a_job_folder_held_by_a_running_process_is_never_evicted(cache):
    import subprocess
    import sys

    old = time.time() - 5 * 3600
    for job in ("running", "done"):
        log_file = cache.path(f"jobs/{job}/attempt-1.log")
        log_file.parent.mkdir(parents=True)
        log_file.write_bytes(b"x" * 8000)
        os.utime(log_file, (old, old))
    held_by_another = subprocess.Popen(  # a training child of another worker of this host, quiet for hours
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from app.core.local_cache import LocalCache; "
            "c = LocalCache(None, Path(sys.argv[1]), 0); h = c.hold('jobs/running'); print('held', flush=True); "
            "time.sleep(60)",
            str(cache.root),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert held_by_another.stdout.readline().strip() == "held"
        cache.max_bytes = 0
        cache.trim()
        assert cache.path("jobs/running/attempt-1.log").exists() and not cache.path("jobs/done").exists()
    finally:
        held_by_another.kill()
        held_by_another.wait()
    cache.trim()  # its process gone, the lock goes with it
    assert not cache.path("jobs/running").exists()


def test_the_cache_must_be_apart_from_the_local_store(tmp_path):
    from pydantic import ValidationError

    from app.core.settings import Settings

    with pytest.raises(ValidationError, match="must be apart from artifacts_dir"):
        Settings(artifacts_dir=tmp_path / "store", cache_dir=tmp_path / "store" / "cache")
    with pytest.raises(ValidationError, match="must be apart from artifacts_dir"):
        Settings(artifacts_dir=tmp_path / "var" / "artifacts", cache_dir=tmp_path / "var")
    Settings(artifacts_dir=tmp_path / "var" / "artifacts", cache_dir=tmp_path / "var" / "cache")
    Settings(artifacts_dir=tmp_path / "store", cache_dir=tmp_path / "store" / "cache", store_url="s3://bucket")

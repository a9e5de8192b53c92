"""Triton's compile cache shared through the object store (worker/child/compiled_kernels.py): what one host compiled
reaches a new host's folder whole, its group files pointing at that host's copies, a group file never ahead of the
files it lists; an entry completed later is completed in the store too; a store that fails never fails the job."""

from __future__ import annotations

import json

import pytest

from app.core.object_store import ObjectStore
from worker.child import compiled_kernels
from worker.child.compiled_kernels import pull_compiled, push_compiled, share_compiled

PREFIX = "compiled/triton/triton-3.6.0-sm90-cp312-x86_64"  # environment_prefix() on a GPU host


def triton_entry(folder, entry: str, files: dict[str, bytes], group: bool = True) -> None:
    """An entry as Triton's FileCacheManager writes it: its files, then __grp__<name>.json with absolute paths."""
    d = folder / entry
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    if group:
        listed = {name: str(d / name) for name in files}
        (d / "__grp__k.json").write_text(json.dumps({"child_paths": listed}))


class Recorded(ObjectStore):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.puts: list[str] = []

    def put_file(self, key, path) -> None:
        self.puts.append(key)
        super().put_file(key, path)


def test_kernels_compiled_on_one_host_reach_another_host_whole(tmp_path, monkeypatch):
    store = Recorded((tmp_path / "store").as_uri())
    a, b = tmp_path / "host-a" / "triton", tmp_path / "host-b" / "triton"
    triton_entry(a, "ENTRYONE", {"k.cubin": b"\x00cubin", "k.json": b'{"name": "k"}', "k.ptx": b"ptx"})
    triton_entry(a, "LAUNCHER", {"cuda_utils.so": b"\x7fELF"}, group=False)  # Triton's driver stub: one file
    monkeypatch.setenv("TRITON_CACHE_DIR", str(a))
    assert push_compiled(store, PREFIX) == 5
    entry = [k for k in store.puts if "/ENTRYONE/" in k]
    assert entry[-1] == f"{PREFIX}/ENTRYONE/__grp__k.json"  # after the three files it lists
    assert push_compiled(store, PREFIX) == 0  # nothing new

    monkeypatch.setenv("TRITON_CACHE_DIR", str(b))
    assert pull_compiled(store, PREFIX) == 5
    assert pull_compiled(store, PREFIX) == 0
    assert (b / "ENTRYONE" / "k.cubin").read_bytes() == b"\x00cubin"
    assert (b / "LAUNCHER" / "cuda_utils.so").read_bytes() == b"\x7fELF"
    group = json.loads((b / "ENTRYONE" / "__grp__k.json").read_text())["child_paths"]
    # what Triton's get_group needs: every listed path exists, on this host
    assert group == {n: str(b / "ENTRYONE" / n) for n in ("k.cubin", "k.json", "k.ptx")}
    assert sorted(p.name for p in (b / "ENTRYONE").iterdir()) == ["__grp__k.json", "k.cubin", "k.json", "k.ptx"]


def test_an_entry_completed_later_is_completed_in_the_store(tmp_path, monkeypatch):
    store = ObjectStore((tmp_path / "store").as_uri())
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(a))
    triton_entry(a, "ENTRY", {"k.cubin": b"c"}, group=False)  # another process of host a is still compiling it
    assert push_compiled(store, PREFIX) == 1
    triton_entry(a, "ENTRY", {"k.cubin": b"c", "k.json": b"{}"})
    assert push_compiled(store, PREFIX) == 2  # the file it lacked, then the group
    monkeypatch.setenv("TRITON_CACHE_DIR", str(b))
    assert pull_compiled(store, PREFIX) == 3
    assert json.loads((b / "ENTRY" / "__grp__k.json").read_text())["child_paths"]["k.json"] == str(b / "ENTRY/k.json")


def test_a_malformed_entry_spoils_no_other(tmp_path, monkeypatch):
    store = ObjectStore((tmp_path / "store").as_uri())
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(a))
    triton_entry(a, "AAA", {"k.cubin": b"c"})
    (a / "AAA" / "__grp__k.json").write_text("{not json")  # sorted first: every later entry must still come
    triton_entry(a, "ZZZ", {"k.cubin": b"z"})
    push_compiled(store, PREFIX)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(b))
    assert pull_compiled(store, PREFIX) == 3  # AAA's cubin, ZZZ's cubin and group; AAA's group is skipped
    assert (b / "ZZZ" / "__grp__k.json").is_file() and not (b / "AAA" / "__grp__k.json").exists()
    assert not [p for p in (b / "AAA").iterdir() if p.name.startswith(".")]  # no half-fetched file left


def test_a_failing_store_never_fails_the_job_but_an_interrupt_goes_on(tmp_path, monkeypatch, caplog):
    from worker.child.job_context import Interrupted

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    monkeypatch.setattr(compiled_kernels, "environment_prefix", lambda: PREFIX)
    triton_entry(tmp_path / "triton", "ENTRY", {"k.cubin": b"c"})

    class Away(ObjectStore):
        def list(self, prefix):
            raise OSError("connection refused")

    away = Away((tmp_path / "store").as_uri())
    share_compiled(away, "push")
    share_compiled(away, "pull")
    assert [r.getMessage() for r in caplog.records if "compiled kernels" in r.getMessage()] == [
        "compiled kernels: push failed: connection refused",
        "compiled kernels: pull failed: connection refused",
    ]

    class ShuttingDown(ObjectStore):
        def list(self, prefix):
            raise Interrupted("the worker is shutting down")  # the child's SIGTERM handler, mid-listing

    with pytest.raises(Interrupted):
        share_compiled(ShuttingDown((tmp_path / "store").as_uri()), "pull")


def test_a_host_without_a_gpu_shares_nothing(tmp_path, monkeypatch):
    """A CPU worker compiles no Triton kernel: nothing to fetch or store, and no folder named for a GPU."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    assert compiled_kernels.environment_prefix() is None  # this machine has no GPU

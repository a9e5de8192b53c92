"""Kernels compiled on one host, for every host: Triton's compile cache (TRITON_CACHE_DIR, under cache_dir unless an
operator set it: worker/child/process.py) shared through the object store, at compiled/triton/<entry>/<file>.

A host keeps its compiled kernels between jobs and restarts, but a new host compiled every variant of Liger's and
ftaas' Triton kernels inside its first job's steps: on an H100 the first 3,000-row 1B QLoRA job of a host trained at
43,133 tokens/s against 53,228 for the next one, and its first step came 2.2 s later (bench/runs-2026-12-06b,
gpu-b.sh). Triton names an entry by a hash of the kernel's source, its specialisation, the GPU target and Triton's
own version, so hosts of other GPUs or software never use each other's entries.

Triton writes each file of an entry atomically and the entry's group file (__grp__*) last; it uses an entry only
once its group file lists every file. Here a group file is likewise pushed after the files it lists and fetched
after them; its paths are absolute (Triton's format), so a fetched one is rewritten to this host's folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from app.core.object_store import ObjectStore

log = logging.getLogger("ftaas.child")

PREFIX = "compiled/triton"
GROUP = "__grp__"


def local_folder() -> Path | None:
    folder = os.environ.get("TRITON_CACHE_DIR", "").strip()
    return Path(folder) if folder else None


def group_last(name: str) -> tuple[bool, str]:
    return name.startswith(GROUP), name


def stored_entries(store: ObjectStore) -> dict[str, set[str]]:
    entries: dict[str, set[str]] = {}
    for key in store.list(PREFIX):
        parts = key[len(PREFIX) + 1 :].split("/")
        if len(parts) == 2:
            entries.setdefault(parts[0], set()).add(parts[1])
    return entries


def local_entries(folder: Path) -> dict[str, set[str]]:
    """Each entry's files (Triton's temporary folders inside an entry, and files being fetched, left out)."""
    entries = {}
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.is_dir():
            names = {p.name for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")}
            if names:
                entries[entry.name] = names
    return entries


def push_compiled(store: ObjectStore) -> int:
    """This host's kernels that the store lacks, stored; returns how many files."""
    folder = local_folder()
    if folder is None:
        return 0
    stored = stored_entries(store)
    pushed = 0
    for entry, names in local_entries(folder).items():
        for name in sorted(names - stored.get(entry, set()), key=group_last):
            store.put_file(f"{PREFIX}/{entry}/{name}", folder / entry / name)
            pushed += 1
    return pushed


def pull_compiled(store: ObjectStore) -> int:
    """The store's kernels that this host lacks, fetched; returns how many files."""
    folder = local_folder()
    if folder is None:
        return 0
    have = local_entries(folder)
    pulled = 0
    for entry, names in stored_entries(store).items():
        for name in sorted(names - have.get(entry, set()), key=group_last):
            dest = folder / entry / name
            if not name.startswith(GROUP):
                store.get_file(f"{PREFIX}/{entry}/{name}", dest)
            else:
                part = store.get_file(f"{PREFIX}/{entry}/{name}", dest.with_name(f".{name}.{os.getpid()}.fetched"))
                group = json.loads(part.read_text())
                group["child_paths"] = {k: str(dest.parent / Path(p).name) for k, p in group["child_paths"].items()}
                part.write_text(json.dumps(group))
                os.replace(part, dest)
            pulled += 1
    return pulled


def share_compiled(store: ObjectStore, direction: str) -> None:
    """pull or push, never failing the job: a kernel that is not shared is compiled again where it is needed."""
    try:
        n = (pull_compiled if direction == "pull" else push_compiled)(store)
    except Exception:  # noqa: BLE001 - the store may be away, a file may be half written by another process
        log.warning("compiled kernels: %s failed", direction, exc_info=True)
        return
    if n:
        log.info(
            "compiled kernels: %s %d files %s the store",
            "fetched" if direction == "pull" else "stored",
            n,
            "from" if direction == "pull" else "to",
        )

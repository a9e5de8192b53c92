"""Kernels compiled on one host, for every host: Triton's compile cache (TRITON_CACHE_DIR, under cache_dir unless an
operator set it: worker/child/process.py) shared through the object store, at compiled/triton/<environment>/<entry>/
<file>, where <environment> names Triton's version, the GPU architecture, Python's version and the machine.

A host keeps its compiled kernels between jobs and restarts, but a new host compiled every variant of Liger's and
ftaas' Triton kernels inside its first job's steps: on an H100 the first 3,000-row 1B QLoRA job of a host trained at
43,133 tokens/s against 53,228 for the next one, and its first step came 2.2 s later (bench/runs-2026-12-06b,
gpu-b.sh). Triton names an entry by a hash of the kernel's source, its specialisation, the GPU target and Triton's
own version, so hosts of other GPUs or software never use each other's entries.

Triton writes each file of an entry atomically and the entry's group file (__grp__*) last; it uses an entry only
once its group file lists every file. Here a group file is likewise pushed after the files it lists and fetched
after them; its paths are absolute (Triton's format), so a fetched one is rewritten to this host's folder.
Entries hold native code (cubins, and the launchers Triton builds as shared libraries), which every host of the
fleet loads: the store is trusted as it is for everything else a worker loads from it (checkpoints, adapters).
Nothing prunes the folder: an operator drops an environment's folder once no host runs it.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
from pathlib import Path

from app.core.object_store import ObjectStore, StoreError

log = logging.getLogger("ftaas.child")

PREFIX = "compiled/triton"
GROUP = "__grp__"


def local_folder() -> Path | None:
    folder = os.environ.get("TRITON_CACHE_DIR", "").strip()
    return Path(folder) if folder else None


def environment_prefix() -> str | None:
    """The store's folder for hosts like this one: Triton's version, the GPU's architecture, Python's and the
    machine's. Triton's entry names already tell these apart; the folder keeps a host from fetching (and a store
    from mixing) entries of others, and lets an operator drop an old one whole. None where there is no GPU."""
    try:
        import torch
        import triton
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return f"{PREFIX}/triton-{triton.__version__}-sm{major}{minor}-{py}-{platform.machine()}"


def group_last(name: str) -> tuple[bool, str]:
    return name.startswith(GROUP), name


def stored_entries(store: ObjectStore, prefix: str) -> dict[str, set[str]]:
    entries: dict[str, set[str]] = {}
    for key in store.list(prefix):
        parts = key[len(prefix) + 1 :].split("/")
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


def push_compiled(store: ObjectStore, prefix: str) -> int:
    """This host's kernels that the store lacks, stored under `prefix`; returns how many files."""
    folder = local_folder()
    if folder is None:
        return 0
    stored = stored_entries(store, prefix)
    pushed = 0
    for entry, names in local_entries(folder).items():
        for name in sorted(names - stored.get(entry, set()), key=group_last):
            store.put_file(f"{prefix}/{entry}/{name}", folder / entry / name)
            pushed += 1
    return pushed


def pull_compiled(store: ObjectStore, prefix: str) -> int:
    """The store's kernels under `prefix` that this host lacks, fetched; returns how many files. An entry that
    cannot be fetched (a malformed group file) is skipped, never the ones after it."""
    folder = local_folder()
    if folder is None:
        return 0
    have = local_entries(folder)
    pulled = 0
    for entry, names in stored_entries(store, prefix).items():
        try:
            for name in sorted(names - have.get(entry, set()), key=group_last):
                fetch(store, f"{prefix}/{entry}/{name}", folder / entry / name)
                pulled += 1
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            log.warning("compiled kernels: entry %s skipped: %s", entry, exc)
    return pulled


def fetch(store: ObjectStore, key: str, dest: Path) -> None:
    """One file of an entry into place; a group file with its paths rewritten to this host's folder first."""
    if not dest.name.startswith(GROUP):
        store.get_file(key, dest)
        return
    part = store.get_file(key, dest.with_name(f".{dest.name}.{os.getpid()}.fetched"))
    try:
        group = json.loads(part.read_text())
        group["child_paths"] = {k: str(dest.parent / Path(p).name) for k, p in group["child_paths"].items()}
        part.write_text(json.dumps(group))
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def share_compiled(store: ObjectStore, direction: str) -> None:
    """pull or push, never failing the job: a kernel that is not shared is compiled again where it is needed. An
    interrupt (a worker's shutdown) is not a failure of the store: it goes on."""
    try:
        prefix = environment_prefix()
        if prefix is None:
            return
        n = (pull_compiled if direction == "pull" else push_compiled)(store, prefix)
    except (StoreError, OSError, ValueError, RuntimeError) as exc:  # the store away, a half-written file, no GPU
        log.warning("compiled kernels: %s failed: %s", direction, exc)
        return
    if n:
        verb = "fetched from" if direction == "pull" else "stored to"
        log.info("compiled kernels: %d files %s the store (%s)", n, verb, prefix)

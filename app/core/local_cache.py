"""This host's own copies of stored objects, bounded: what a worker reads (datasets, adapters, checkpoints to resume
from) is fetched from the store once and kept; what it makes (checkpoints, archives) is written here, then pushed.

Copies live at their keys under cache_dir (cache_dir/files/<name>, cache_dir/jobs/<job_id>/...). The store is the
truth: a folder pulled from it is made equal to it (a stale local checkpoint of an attempt whose upload never
finished goes), and a file fetched with its checksum is checked against it, so a copy that no longer matches is
fetched again and a damaged object is an error, not a silent input.

Bounded: `trim` removes the least recently used units (one uploaded file, its tokenized rows, one job's folder)
until the cache holds at most cache_max_gb, sparing the caller's own, a job folder a running process holds (`hold`,
a file lock), and anything used in the last IN_USE_S (a fetched file is touched when used): several workers of a
host may share one cache_dir.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from app.core.object_store import ObjectStore, StoreError, get_store
from app.core.settings import Settings, get_settings

log = logging.getLogger("ftaas.cache")

IN_USE_S = 15 * 60  # a unit touched this recently may be in use by another process of this host: never evicted
IN_USE_MARKER = ".in-use"  # a job folder's lock file, held (flock) by the process working on it: never evicted


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class LocalCache:
    def __init__(self, store: ObjectStore, root: Path, max_bytes: int) -> None:
        self.store, self.root, self.max_bytes = store, Path(root), max_bytes

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> LocalCache:
        settings = settings or get_settings()
        return cls(get_store(), settings.cache_dir, int(settings.cache_max_gb * 1024**3))

    def path(self, key: str) -> Path:
        return self.root / key

    def key_of(self, path: Path) -> str:
        return Path(path).relative_to(self.root).as_posix()

    # ------------------------------------------------------------------------------------------- from the store

    def fetch(self, key: str, sha256: str | None = None) -> Path:
        """The local copy of `key`, fetched when missing or no longer equal to the stored object (by checksum when
        one is given, else by size). Raises FileNotFoundError when the store has no such object, StoreError when
        the fetched bytes do not match the checksum."""
        path = self.path(key)
        if path.is_file() and (sha256_file(path) == sha256 if sha256 else path.stat().st_size == self.store.size(key)):
            os.utime(path)
            return path
        self.store.get_file(key, path)
        if sha256 and (got := sha256_file(path)) != sha256:
            path.unlink(missing_ok=True)
            raise StoreError(f"object store {self.store.url}: {key!r} is damaged: sha256 {got}, stored {sha256}")
        return path

    def pull(self, prefix: str) -> Path:
        """The local folder of `prefix` made equal to the store's: objects missing here or of another size are
        fetched, local files the store does not hold are removed. Returns the folder."""
        folder = self.path(prefix)
        base = prefix.rstrip("/") + "/"
        stored = {}
        for key in self.store.list(prefix):
            stored[key[len(base) :]] = key
        for rel, key in stored.items():
            local = folder / rel
            if not local.is_file() or local.stat().st_size != self.store.size(key):
                self.store.get_file(key, local)
        if folder.is_dir():
            for local in sorted(folder.rglob("*"), reverse=True):  # files before the folders holding them
                rel = local.relative_to(folder).as_posix()
                if local.is_file() and rel not in stored:
                    local.unlink()
                elif local.is_dir() and not any(local.iterdir()):
                    local.rmdir()
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # --------------------------------------------------------------------------------------------- to the store

    def push(self, path: Path) -> str:
        """The local file stored at its key; returns the key."""
        key = self.key_of(path)
        self.store.put_file(key, path)
        return key

    def push_folder(self, folder: Path, last: Iterable[str] = ()) -> list[str]:
        """Every file of `folder` stored, the names in `last` after all the others (a marker that says the rest is
        complete must never reach the store before what it vouches for)."""
        last = set(last)
        files = sorted((p for p in Path(folder).rglob("*") if p.is_file()), key=lambda p: (p.name in last, str(p)))
        return [self.push(p) for p in files]

    def drop_stored_extras(self, folder: Path, first: Iterable[str] = ()) -> int:
        """Stored objects under `folder`'s key that have no local file any more are deleted (the local folder was
        pruned); the names in `first` go before the rest, so a half-deleted folder never looks complete."""
        first = set(first)
        prefix = self.key_of(folder)
        gone = [k for k in self.store.list(prefix) if not self.path(k).is_file()]
        markers = [k for k in gone if k.rsplit("/", 1)[-1] in first]
        self.store.delete(markers)
        self.store.delete([k for k in gone if k not in markers])
        return len(gone)

    # ------------------------------------------------------------------------------------------------- bounds

    def units(self) -> list[tuple[float, int, Path]]:
        """(last used, bytes, folder or file) of every unit: files/<name>, tokenized/<name>, jobs/<job_id>,
        comparisons/<log>."""
        out = []
        for top in ("files", "tokenized", "jobs", "comparisons"):
            parent = self.root / top
            for unit in parent.iterdir() if parent.is_dir() else ():
                # the lock file says nothing of use: opened by a process that may be gone
                entries = [unit] if unit.is_file() else [p for p in unit.rglob("*") if p.is_file()]
                entries = [p for p in entries if p.name != IN_USE_MARKER]
                stats = [p.stat() for p in entries if p.exists()]
                used = max((st.st_mtime for st in stats), default=unit.stat().st_mtime)
                out.append((used, sum(st.st_size for st in stats), unit))
        return sorted(out, key=lambda u: u[0])

    def hold(self, key: str):
        """Mark the unit `key` ("jobs/<id>") in use for as long as the returned file stays open (this process's
        life, for a training child): trim in any process of this host leaves it alone, however long it goes
        without writing (loading a large model, a long evaluation)."""
        marker = self.path(key) / IN_USE_MARKER
        marker.parent.mkdir(parents=True, exist_ok=True)
        held = open(marker, "a")  # noqa: SIM115 - kept open on purpose: the lock lives as long as the file
        fcntl.flock(held, fcntl.LOCK_SH)
        return held

    @staticmethod
    def _held(unit: Path) -> bool:
        marker = unit / IN_USE_MARKER
        if not marker.is_file():
            return False
        with open(marker, "a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(probe, fcntl.LOCK_UN)
        return False

    def trim(self, keep: Iterable[str] = ()) -> int:
        """The least recently used units removed until the cache holds at most max_bytes, except the keys in `keep`
        (a job's "jobs/<id>", a file's "files/<name>" or "tokenized/<name>") and units used in the last IN_USE_S;
        returns bytes freed."""
        keep_paths = {self.path(k) for k in keep}
        units = self.units()
        total, freed, now = sum(u[1] for u in units), 0, time.time()
        for used, size, unit in units:
            if total - freed <= self.max_bytes:
                break
            if unit in keep_paths or now - used < IN_USE_S or (unit.is_dir() and self._held(unit)):
                continue
            if unit.is_dir():
                shutil.rmtree(unit, ignore_errors=True)
            else:
                unit.unlink(missing_ok=True)
            freed += size
            log.info("cache: removed %s (%d bytes, unused for %.0f s)", unit, size, now - used)
        return freed

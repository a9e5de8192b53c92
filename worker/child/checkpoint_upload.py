"""Checkpoints on their way to the object store, while training goes on.

The loop saves a checkpoint to this host's cache (worker/training/checkpoints.py) and goes on training; a thread
pushes it to the store (COMPLETE last, so a checkpoint half uploaded never looks whole to the host that resumes)
and deletes what the loop pruned since (COMPLETE first, so a checkpoint half deleted never looks whole either).
One push at a time: the next checkpoint waits for the previous push, which bounds what is in flight to one
checkpoint and keeps the loop's pruning (never the newest two) away from the folder being pushed. A checkpoint's row
(GET .../checkpoints) is written once its push is done (`take_stored`, from the training thread, which owns the
database writes): a listed checkpoint is one any host can resume from.

A store away for a while (a restart, the network) costs nothing but time: the store's own retries
(store_retry_s) carry the push until it is back. A store away for longer fails the attempt, with the store's
reason, at the next checkpoint or at the end of training, never a job that succeeds without its files.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from pathlib import Path

from app.core.local_cache import LocalCache
from worker.training.checkpoints import COMPLETE_MARKER

log = logging.getLogger("ftaas.child")


class CheckpointUploader:
    def __init__(self, cache: LocalCache, ckpt_root: Path) -> None:
        self.cache, self.ckpt_root = cache, ckpt_root
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stored: queue.SimpleQueue = queue.SimpleQueue()  # each stored folder's `about`, until take_stored

    def submit(self, folder: Path, step: int, about=None) -> None:
        """Push `folder` (a checkpoint just saved) from a thread, after the previous push has finished; `about`
        comes back from take_stored once it is stored."""
        self.wait()
        # in this thread's context: its log lines carry the job's request id and job id (app/core/logs.py)
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._push, folder, step, about), name="checkpoint-upload", daemon=True
        )
        self._thread.start()

    def take_stored(self) -> list:
        """The `about` of each checkpoint stored since the last call, oldest first."""
        taken = []
        while not self._stored.empty():
            taken.append(self._stored.get_nowait())
        return taken

    def _push(self, folder: Path, step: int, about) -> None:
        t = time.monotonic()
        try:
            for path in sorted(self.ckpt_root.iterdir()):  # files beside the checkpoints (reference_logps.pt)
                if path.is_file() and self.cache.store.size(self.cache.key_of(path)) != path.stat().st_size:
                    self.cache.push(path)
            self.cache.push_folder(folder, last=(COMPLETE_MARKER,))
            self.cache.drop_stored_extras(self.ckpt_root, first=(COMPLETE_MARKER,))
            self._stored.put(about)
            log.info("checkpoint of step %s stored in %.1fs", step, time.monotonic() - t)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Until the push in flight is done; raises its error (a StoreError that names the store and why)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

"""Downloads of stored objects (uploaded datasets, adapter archives, merged models): streamed from the object store
with Range (a resumed download reads only what it lacks), or a redirect to a presigned URL, in the API's error shape.

StoreDownload is Starlette's FileResponse over an object of the store instead of a local file: FileResponse's Range
parsing, multipart/byteranges and headers stay, and its file reads become ranged reads of the store
(app/core/object_store.py), so the API host needs no copy and its memory stays flat whatever the size.

Checked on the way out: the object's size must be the one stored with its row before anything is sent (a 500 that
says so, never a truncated file that looks whole), and a whole-object download is hashed as it streams; on a
mismatch with the stored SHA-256 the connection is cut before the last byte, so the client sees a failed transfer
instead of a corrupt file.

Starlette answers a malformed or unsatisfiable Range header with a plain-text 400 or 416; every other error of this
API is the JSON body of app/errors.py. Raised before the response starts, an ApiError goes through the app's
exception handlers like any route's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from contextlib import asynccontextmanager

from starlette.responses import FileResponse, MalformedRangeHeader, RangeNotSatisfiable, RedirectResponse, Response

from app.core.errors import ApiError
from app.core.object_store import STREAM_CHUNK, ObjectStore, get_store
from app.core.settings import Settings

log = logging.getLogger("ftaas.api")


# OpenAPI: what a download answers when the store signs URLs (download_redirect_s)
REDIRECT_RESPONSE = {
    307: {
        "description": "redirect to a presigned URL of the object store, valid download_redirect_s seconds "
        "(only where the server is configured so)"
    }
}


class ChecksumMismatch(Exception):
    pass


class _StoredObject:
    """The async file FileResponse reads (read, seek), over ranged reads of one stored object."""

    def __init__(self, store: ObjectStore, key: str, size: int, sha256: str | None) -> None:
        self.store, self.key, self.size, self.sha256 = store, key, size, sha256
        self._stream = None
        self._buffer = bytearray()
        self._digest = None  # hashing a read from byte 0 on, the whole object's check
        self._pos = 0

    async def seek(self, pos: int) -> None:
        await self.aclose()
        self._stream = self.store.read_async(self.key, pos).__aiter__()
        self._buffer.clear()
        self._pos = pos
        self._digest = hashlib.sha256() if pos == 0 and self.sha256 else None

    async def read(self, n: int) -> bytes:
        if self._stream is None:
            await self.seek(0)
        while len(self._buffer) < n:
            try:
                self._buffer += await anext(self._stream)
            except StopAsyncIteration:
                break
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._pos += len(out)
        if self._digest is not None:
            self._digest.update(out)
            if self._pos >= self.size and self._digest.hexdigest() != self.sha256:
                log.error("download of %s cut: sha256 %s, stored %s", self.key, self._digest.hexdigest(), self.sha256)
                raise ChecksumMismatch(f"{self.key}: the stored object does not match its SHA-256")
        return out

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None


class Download(FileResponse):
    """A local file (FileResponse) whose Range errors are the API's."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            return super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as exc:
            raise ApiError(400, f"Invalid Range header: {exc.content}", param="Range", code="invalid_range") from exc
        except RangeNotSatisfiable as exc:
            raise ApiError(
                416,
                f"Range not satisfiable: the file has {exc.max_size} bytes",
                param="Range",
                code="range_not_satisfiable",
                headers={"Content-Range": f"bytes */{exc.max_size}"},
            ) from exc


class StoreDownload(Download):
    chunk_size = STREAM_CHUNK

    def __init__(self, store: ObjectStore, key: str, size: int, modified: float, sha256: str | None, **kwargs) -> None:
        fake_stat = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, size, modified, modified, modified))
        super().__init__(key, stat_result=fake_stat, **kwargs)
        self._object = _StoredObject(store, key, size, sha256)

    @asynccontextmanager
    async def _open_file(self):
        try:
            await self._object.seek(0)
            yield self._object
        finally:
            await self._object.aclose()

    async def _handle_simple(self, send, send_header_only: bool, send_pathsend: bool) -> None:
        await super()._handle_simple(send, send_header_only, False)  # no local path to hand the server


def stored_download(
    settings: Settings,
    key: str,
    *,
    expected_bytes: int | None,
    sha256: str | None,
    media_type: str,
    filename: str,
    missing: ApiError,
    headers: dict[str, str] | None = None,
) -> Response:
    """The stored object `key` as a download: a 307 to a presigned URL when download_redirect_s is set and the store
    can sign, else streamed. `missing` is raised when the store has no such object; a size other than the row's
    is a 500 that names the damage."""
    store = get_store()
    found = store.head(key)
    if found is None:
        raise missing
    size, modified = found
    if expected_bytes is not None and size != expected_bytes:
        raise ApiError(
            500,
            f"{filename} is damaged in storage: {size} bytes stored, {expected_bytes} expected",
            code="stored_object_damaged",
        )
    headers = dict(headers or {})
    if sha256:
        headers.setdefault("X-Checksum-SHA256", sha256)
    if settings.download_redirect_s and (url := store.presigned_get(key, settings.download_redirect_s)):
        return RedirectResponse(url, status_code=307, headers=headers)
    return StoreDownload(store, key, size, modified, sha256, media_type=media_type, filename=filename, headers=headers)

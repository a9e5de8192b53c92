"""Where the files of jobs live when no folder is shared: the local folder (the embedded default) or any
S3-compatible object store (AWS S3, MinIO, Cloudflare R2, GCS through its S3 interoperability), behind one small
interface. Keys are the relative names of app/core/storage.py's layout ("files/<storage_name>",
"jobs/<job_id>/checkpoints/step-3/adapter_model.safetensors", ...).

The library is obstore (Python bindings of Apache Arrow's Rust `object_store`): one package for the local folder
and every cloud, no botocore to pin against the rest of the stack (s3fs through aiobotocore pins botocore
exactly; boto3 is sync only and several times larger), streaming multipart uploads from a file, an iterator or an
async iterator, ranged and streamed reads, presigned URLs, and its own retries with backoff. Both backends go through
the same obstore calls, so the local default exercises the code path a fleet runs.

    FTAAS_STORE_URL       unset: file://<artifacts_dir>; s3://bucket[/prefix] for an object store
    FTAAS_S3_ENDPOINT     an S3-compatible server's URL (MinIO, R2, moto); unset: AWS
    FTAAS_S3_REGION       us-east-1 unless set
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN): read by obstore as AWS's own tools read them
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import suppress
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

from app.core.settings import Settings, get_settings

STREAM_CHUNK = 1024 * 1024  # the size of each piece a streamed read hands back (and of a ranged read's reads)
# A stream (an upload through the API) goes up as 5 MiB parts, 4 at a time: at most 20 MiB of it in memory per
# upload (obstore's default, 12 at a time, measured +60 MiB of API peak RSS on a 2 GiB upload to S3; this, see
# tests/e2e/test_uploads_live.py). S3 takes no part under 5 MiB but the last.
STREAM_PART = 5 * 1024 * 1024
STREAM_PARTS_IN_FLIGHT = 4


class StoreError(Exception):
    """The object store refused or could not be reached; the message says which store and why."""


class ObjectStore:
    """One bucket (or folder) and an optional prefix; every key is relative to it."""

    def __init__(
        self, url: str, *, endpoint: str | None = None, region: str = "us-east-1", retry_s: float = 120.0
    ) -> None:
        """retry_s: how long a request is retried (with backoff) while the store does not answer or answers 5xx,
        before its error reaches the caller: a store away for a minute does not fail a job."""
        self.url = url.rstrip("/")
        self.is_local = url.startswith("file://")
        self._endpoint, self._region = endpoint, region
        self._store = self._open(retry_s)
        self._quick = self._open(3.0)  # for readiness: an answer in seconds, not after minutes of retries

    def _open(self, retry_s: float):
        from obstore.store import from_url

        if self.is_local:
            Path(urlparse(self.url).path).mkdir(parents=True, exist_ok=True)
            return from_url(self.url, mkdir=True)
        config: dict = {"region": self._region}
        options: dict = {"connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=300)}
        if self._endpoint:
            config.update(endpoint=self._endpoint, virtual_hosted_style_request=False)
            options["allow_http"] = self._endpoint.startswith("http://")
        for key, env in (
            ("access_key_id", "AWS_ACCESS_KEY_ID"),
            ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
            ("session_token", "AWS_SESSION_TOKEN"),
        ):
            if os.environ.get(env):
                config[key] = os.environ[env]
        retry = {"max_retries": 1000, "retry_timeout": timedelta(seconds=retry_s)}
        return from_url(self.url, config=config, client_options=options, retry_config=retry)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ObjectStore:
        settings = settings or get_settings()
        url = settings.store_url or settings.artifacts_dir.resolve().as_uri()
        return cls(url, endpoint=settings.s3_endpoint, region=settings.s3_region, retry_s=settings.store_retry_s)

    def __repr__(self) -> str:
        return f"ObjectStore({self.url})"

    def _fail(self, action: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"object store {self.url}: {action} {key!r} failed: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------------------------------------ writes

    def put_file(self, key: str, path: Path) -> None:
        """The local file under `key`, as one atomic object (multipart past 5 MB, parts sent concurrently)."""
        import obstore

        try:
            obstore.put(self._store, key, Path(path))
        except Exception as exc:  # noqa: BLE001 - obstore raises its own hierarchy; say which store and key
            raise self._fail("put", key, exc) from exc

    def put_stream(self, key: str, chunks: Iterable[bytes]) -> None:
        """The chunks under `key` as they come (multipart): nothing is held in memory beyond a part."""
        import obstore

        try:
            obstore.put(self._store, key, iter(chunks), chunk_size=STREAM_PART, max_concurrency=STREAM_PARTS_IN_FLIGHT)
        except Exception as exc:  # noqa: BLE001
            raise self._fail("put", key, exc) from exc

    async def put_stream_async(self, key: str, chunks: AsyncIterable[bytes]) -> None:
        import obstore

        try:
            await obstore.put_async(
                self._store, key, chunks, chunk_size=STREAM_PART, max_concurrency=STREAM_PARTS_IN_FLIGHT
            )
        except Exception as exc:  # noqa: BLE001
            raise self._fail("put", key, exc) from exc

    def put_folder(self, prefix: str, folder: Path) -> list[str]:
        """Every file under `folder` as prefix/<relative path>; returns the keys written."""
        keys = []
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}"
            self.put_file(key, path)
            keys.append(key)
        return keys

    def delete(self, keys: list[str]) -> None:
        """The objects removed (a key the store does not hold is no error)."""
        import obstore

        if not keys:
            return
        try:
            obstore.delete(self._store, keys)
        except FileNotFoundError:
            for key in keys:  # one of a batch was missing: the local backend stops there, S3 does not
                with suppress(FileNotFoundError):
                    obstore.delete(self._store, key)
        except Exception as exc:  # noqa: BLE001
            raise self._fail("delete", keys[0], exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        """Every object under prefix/ removed; returns how many."""
        keys = self.list(prefix)
        self.delete(keys)
        return len(keys)

    # ------------------------------------------------------------------------------------------------ reads

    def size(self, key: str) -> int | None:
        """The object's size in bytes, None where there is none."""
        import obstore

        try:
            return int(obstore.head(self._store, key)["size"])
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._fail("head", key, exc) from exc

    def head(self, key: str) -> tuple[int, float] | None:
        """(size in bytes, last modified as a Unix time) of the object, None where there is none."""
        import obstore

        try:
            meta = obstore.head(self._store, key)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._fail("head", key, exc) from exc
        return int(meta["size"]), meta["last_modified"].timestamp()

    def list(self, prefix: str) -> list[str]:
        """The keys under prefix/, sorted."""
        import obstore

        try:
            batches = obstore.list(self._store, prefix=prefix.rstrip("/") + "/")
            return sorted(meta["path"] for batch in batches for meta in batch)
        except FileNotFoundError:
            return []
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", prefix, exc) from exc

    def read(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The object's bytes [start, end) as a stream of chunks, never the whole in memory."""
        import obstore

        try:
            options = {"range": (start, end)} if end is not None else ({"range": {"offset": start}} if start else {})
            result = obstore.get(self._store, key, options=options or None)
            for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                yield bytes(chunk)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.url}/{key}") from exc
        except Exception as exc:  # noqa: BLE001
            raise self._fail("get", key, exc) from exc

    async def read_async(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """read's stream for the event loop (the API's downloads)."""
        import obstore

        try:
            options = {"range": (start, end)} if end is not None else ({"range": {"offset": start}} if start else {})
            result = await obstore.get_async(self._store, key, options=options or None)
            async for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                yield bytes(chunk)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.url}/{key}") from exc
        except Exception as exc:  # noqa: BLE001
            raise self._fail("get", key, exc) from exc

    def get_file(self, key: str, dest: Path) -> Path:
        """The object streamed to `dest` (through a temporary file renamed at the end: never a half file there)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            with open(tmp, "wb") as fh:
                for chunk in self.read(key):
                    fh.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def get_folder(self, prefix: str, dest: Path) -> list[Path]:
        """Every object under prefix/ into dest/<relative key>."""
        out = []
        base = prefix.rstrip("/") + "/"
        for key in self.list(prefix):
            out.append(self.get_file(key, Path(dest) / key[len(base) :]))
        return out

    def presigned_get(self, key: str, expires_s: int) -> str | None:
        """A URL anyone may GET the object from for expires_s seconds; None for the local folder."""
        if self.is_local:
            return None
        import obstore

        try:
            return obstore.sign(self._store, "GET", key, timedelta(seconds=expires_s))
        except Exception as exc:  # noqa: BLE001
            raise self._fail("sign", key, exc) from exc

    def check(self) -> None:
        """Raise StoreError with the reason when the store cannot be listed (wrong bucket, credentials, down)."""
        import obstore

        try:
            next(iter(obstore.list(self._quick, prefix="ftaas-readiness/", chunk_size=1)), None)
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", "ftaas-readiness/", exc) from exc


@lru_cache(maxsize=1)
def get_store() -> ObjectStore:
    """This process's store, made once from the settings."""
    return ObjectStore.from_settings()

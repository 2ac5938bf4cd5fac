"""Storage backends and streaming helpers for artifact and export bytes (Django's Storage API).

``STORAGES["artifacts"]`` and ``STORAGES["exports"]`` (see ``h3lab/settings.py``) are either
:class:`DataDirStorage` (folders under ``H3LAB_DATA_DIR``, the default) or django-storages'
``S3Storage`` (``H3LAB_STORAGE=s3``). Code that stores or reads those bytes goes through
:func:`save_streamed` and :func:`open_stream`, which never hold a whole file in memory: uploads
are fed through a pipe (S3: multipart with boto3's TransferConfig), downloads iterate the
object's body in chunks.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from django.conf import settings
from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage

T = TypeVar("T")
CHUNK = 1 << 20
# The threads that read the pipes into storage.save. Long-lived so that each keeps its S3
# connection (django-storages holds one per thread; setting one up costs ~100 ms and a
# dozen MiB of service model). A save waiting for a free thread only delays its producer.
_SAVERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="h3lab-store")
# /readyz's bucket probe: its own thread (and client), never queued behind uploads.
_PROBE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="h3lab-store-probe")


def _new_savers_after_fork() -> None:
    # A forked child (prefork pool, gunicorn) inherits the executors but not their threads.
    global _SAVERS, _PROBE
    _SAVERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="h3lab-store")
    _PROBE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="h3lab-store-probe")


os.register_at_fork(after_in_child=_new_savers_after_fork)


class DataDirStorage(FileSystemStorage):
    """A folder named by a setting (``ARTIFACTS_DIR``, ``EXPORTS_DIR``), read at each use so that
    a test's ``settings`` override moves it. No URL: nothing here is served directly."""

    def __init__(self, setting: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.setting = setting

    @property
    def base_location(self) -> str:
        return str(getattr(settings, self.setting))

    @property
    def location(self) -> str:
        return os.path.abspath(self.base_location)

    @cached_property
    def base_url(self) -> str:
        raise NotImplementedError("stored files are only served through permission checks")


def is_object_storage(storage: Storage) -> bool:
    """Whether ``storage`` is an S3-compatible bucket (django-storages' S3Storage)."""
    return hasattr(storage, "bucket_name") and hasattr(storage, "connection")


def check_bucket(storage: Storage) -> None:
    """Raise unless the bucket exists and the keys may use it (one HeadBucket). Runs on a
    thread of its own, whose S3 client is kept, rather than set up anew for each probe."""
    s3: Any = storage
    _PROBE.submit(lambda: s3.connection.meta.client.head_bucket(Bucket=s3.bucket_name)).result()


def check_name(name: str) -> str:
    """SECURITY: stored names are written only by our own code, relative and without ``..``;
    refuse anything else anyway so a tampered row cannot reach outside the store."""
    parts = Path(name).parts
    if not name or Path(name).is_absolute() or ".." in parts or "\\" in name:
        raise FileNotFoundError(name)
    return name


class _BodyReader(io.RawIOBase):
    """A raw file over a streaming body (``read(n)`` only), so buffered and ``readinto``
    readers (the decryptor) can consume it chunk by chunk."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._body.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def open_stream(storage: Storage, name: str) -> BinaryIO:
    """Open a stored file for reading in chunks. Raises FileNotFoundError if it is missing.

    On S3 this is one GET whose body is read as it is consumed (django-storages' ``open``
    would first download the whole object into a temporary buffer)."""
    check_name(name)
    if not is_object_storage(storage):
        return storage.open(name, "rb")  # type: ignore[return-value]
    key = storage._normalize_name(name)  # type: ignore[attr-defined]  # prefix + name
    client = storage.connection.meta.client  # type: ignore[attr-defined]
    try:
        body = client.get_object(Bucket=storage.bucket_name, Key=key)["Body"]  # type: ignore[attr-defined]
    except Exception as exc:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(name) from None
        raise
    return io.BufferedReader(_BodyReader(body), CHUNK)


def save_streamed(storage: Storage, name: str, produce: Callable[[BinaryIO], T]) -> tuple[str, T]:
    """Store what ``produce`` writes to the file it is given under ``name`` (or the free name
    the storage picks; returned with ``produce``'s result), without holding the file in memory
    or on local disk: ``produce`` runs in this thread (it may use the database) and writes into
    a pipe that the storage's ``save`` reads in another thread (S3: a multipart upload whose
    memory is bounded by the TransferConfig). If either side fails, nothing is left stored."""
    check_name(name)
    r, w = os.pipe()
    saved: dict[str, Any] = {}

    def consume() -> None:
        try:
            with open(r, "rb", buffering=CHUNK) as inp:
                saved["name"] = storage.save(name, File(inp, name=os.path.basename(name)))
        except BaseException as exc:  # handed to the producing thread below
            saved["error"] = exc

    done = _SAVERS.submit(consume)
    result: T | None = None
    failure: BaseException | None = None
    try:
        with open(w, "wb", buffering=CHUNK) as out:
            result = produce(out)
    except BrokenPipeError:
        pass  # the consumer stopped reading: its own error is raised below
    except BaseException as exc:
        failure = exc
    done.result()
    stored = saved.get("name")
    failure = failure or saved.get("error")
    if failure is not None:
        if stored:
            storage.delete(stored)
        raise failure
    if stored is None:  # pragma: no cover - consume() sets one of the two
        raise RuntimeError(f"storing {name} produced no name")
    return str(stored), result  # type: ignore[return-value]

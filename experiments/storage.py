"""Where artifact bytes live. One seam: every artifact byte is written by :func:`store_file`
(or re-stored by :func:`declassify`) and read by :func:`open_artifact`.

Encryption at rest: a run's outputs are restricted (team tier) when they are stored, so
:func:`store_file` encrypts them straight from the worker's file into the artifact store
(AES-256-GCM in authenticated 1 MiB chunks, :mod:`vault.crypto`) under a fresh data key,
which is kept only wrapped by the master key and bound to the artifact's identity. No
plaintext copy is ever written. :func:`open_artifact` decrypts as a stream, in memory, for the
permission-checked download view (and exports); :func:`declassify` re-stores an artifact in the
clear once a finding citing it is public; :func:`shred` destroys the data key.

The bytes go through Django's Storage API (``STORAGES["artifacts"]``: a folder under
``H3LAB_DATA_DIR`` by default, an S3-compatible bucket with ``H3LAB_STORAGE=s3``), streamed both
ways (:mod:`experiments.storage_backends`), so a worker on another host needs no shared folder.

SECURITY: artifacts are never served by the storage directly (no URL, no presigned link); only
:func:`open_artifact` reads them, and only permission-checked code calls it.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.core.files.storage import Storage, storages
from django.db import transaction
from django.utils import timezone

from experiments.models import Artifact, ArtifactKind, Run
from experiments.storage_backends import check_name, open_stream, save_streamed
from vault import crypto, keystore

CHUNK = 1 << 20


class ArtifactUnavailable(Exception):
    """The artifact's bytes cannot be produced. ``reason`` is ``"destroyed"`` (crypto-shredded),
    ``"key"`` (master key missing or wrong) or ``"corrupt"`` (authentication failed: tampered,
    truncated, reordered). Never answered with garbage bytes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def artifact_storage() -> Storage:
    return storages["artifacts"]


def artifact_root() -> Path:
    """The artifacts folder of the default filesystem storage (tests and backups look there)."""
    return Path(settings.ARTIFACTS_DIR)


def run_workdir(run_id: int) -> Path:
    """The scratch directory a worker trains in (checkpoints for resume live here)."""
    return Path(settings.RUNS_DIR) / str(run_id)


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def guess_kind(name: str) -> str:
    if name.endswith(".safetensors"):
        return ArtifactKind.CHECKPOINT
    if name.endswith((".png", ".svg")):
        return ArtifactKind.PLOT
    if name.endswith(".log"):
        return ArtifactKind.LOG
    if name == "config.json":
        return ArtifactKind.CONFIG
    if name.startswith("metrics") and name.endswith(".json"):
        return ArtifactKind.METRICS
    return ArtifactKind.OTHER


class _HashingReader(io.RawIOBase):
    """Reads a file while hashing it, so the plaintext's SHA-256 and size come from the same
    single pass that encrypts it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._f.readinto(buf)  # type: ignore[attr-defined]
        if n:
            view = memoryview(buf)[:n]
            self.sha256.update(view)
            self.size += n
        return n or 0


def store_file(run: Run, src: Path, name: str, kind: str | None = None) -> Artifact:
    """Encrypt ``src`` into artifact storage for ``run`` and return the (unsaved) Artifact.

    SECURITY: the worker's plaintext file is read once and only ciphertext leaves it: it is
    encrypted chunk by chunk straight into the storage's upload (nothing on local disk, memory
    bounded whatever the size). If the name is taken the storage picks a free one."""
    rel = f"{run.project.slug}/{run.pk}/{name}"
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    artifact = Artifact(
        run=run,
        project=run.project,
        name=name,
        kind=kind or guess_kind(name),
        path=rel,
        content_type=ctype,
        encrypted=True,
    )
    master = keystore.current()
    data_key = crypto.new_data_key()
    with src.open("rb", buffering=0) as raw:
        reader = _HashingReader(raw)
        artifact.path, _ = save_streamed(
            artifact_storage(),
            rel,
            lambda out: crypto.encrypt_file(data_key, reader, out),  # type: ignore[arg-type]
        )
    artifact.size, artifact.sha256 = reader.size, reader.sha256.hexdigest()
    artifact.key_id = master.key_id
    artifact.wrapped_key = crypto.wrap_key(master, data_key, context=artifact.key_context)
    return artifact


def _data_key(artifact: Artifact) -> bytes:
    if artifact.is_shredded or artifact.wrapped_key is None:
        raise ArtifactUnavailable(
            "destroyed", "the content of this artifact was destroyed when its finding was retracted"
        )
    try:
        master = keystore.keyring().get(artifact.key_id)
        return crypto.unwrap_key(master, bytes(artifact.wrapped_key), context=artifact.key_context)
    except (crypto.KeyError_, crypto.DecryptionError) as exc:
        raise ArtifactUnavailable(
            "key", f"artifact {artifact.pk} cannot be decrypted: {exc}"
        ) from None


def open_artifact(artifact: Artifact) -> Iterator[bytes]:
    """Stream an artifact's plaintext. Raises FileNotFoundError if storage lost the file and
    :class:`ArtifactUnavailable` if it cannot be decrypted; the first chunk is authenticated
    before this returns, so a wrong key or a corrupt file never starts a response.

    SECURITY: plaintext exists only in the chunks this yields (memory); nothing is written."""
    if artifact.is_shredded:
        _data_key(artifact)  # raises "destroyed"
    f = open_stream(artifact_storage(), artifact.path)
    if not artifact.encrypted:

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(CHUNK):
                    yield chunk

        return chunks()
    try:
        key = _data_key(artifact)
        stream = crypto.decrypt_stream(key, f)
        first = next(stream, b"")
    except crypto.DecryptionError as exc:
        f.close()
        raise ArtifactUnavailable("corrupt", f"artifact {artifact.pk}: {exc}") from None
    except BaseException:
        f.close()
        raise

    def decrypted() -> Iterator[bytes]:
        with f:
            yield first
            try:
                yield from stream
            except crypto.DecryptionError as exc:
                # Earlier chunks were authentic; a later one is not. Abort the stream so the
                # client sees an incomplete download rather than unauthenticated bytes.
                raise ArtifactUnavailable("corrupt", f"artifact {artifact.pk}: {exc}") from None

    return decrypted()


class IterReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (to hand a decrypted stream to code
    that reads files, e.g. the bundle writer). Nothing touches disk."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def open_artifact_file(artifact: Artifact) -> BinaryIO:
    return io.BufferedReader(IterReader(open_artifact(artifact)), CHUNK)


def declassify(artifact: Artifact) -> bool:
    """Re-store an encrypted artifact in the clear (its finding reached the public tier) and
    forget its data key. Returns False if it was already clear or cannot be decrypted (it then
    stays encrypted and is still served, decrypted, to the public)."""
    if not artifact.encrypted or artifact.is_shredded:
        return False
    store = artifact_storage()

    def write_clear(out: BinaryIO) -> str:
        h = hashlib.sha256()
        for chunk in open_artifact(artifact):
            h.update(chunk)
            out.write(chunk)
        if h.hexdigest() != artifact.sha256:
            raise ArtifactUnavailable("corrupt", f"artifact {artifact.pk}: SHA-256 differs")
        return h.hexdigest()

    try:
        clear, _ = save_streamed(store, artifact.path + ".public", write_clear)
    except (ArtifactUnavailable, FileNotFoundError):
        return False  # save_streamed removed the partial copy
    # New file, then the row, then the old ciphertext: a crash before the row leaves an
    # unreferenced clear copy of what is about to be public; after it, an orphaned ciphertext.
    # The row never names a file that does not match its "encrypted" flag.
    old = artifact.path
    Artifact.objects.filter(pk=artifact.pk).update(
        path=clear, encrypted=False, key_id="", wrapped_key=None
    )
    artifact.path, artifact.encrypted, artifact.key_id, artifact.wrapped_key = (
        clear,
        False,
        "",
        None,
    )
    transaction.on_commit(lambda: store.delete(old))
    return True


def shred(artifact: Artifact) -> None:
    """Crypto-shredding: destroy the wrapped data key (the only copy) and remove the stored
    file. An artifact already in the clear (public) can only be deleted.

    SECURITY: after this, backups of the artifact store are unreadable too, since the key
    never existed anywhere but wrapped in this row."""
    now = timezone.now()
    Artifact.objects.filter(pk=artifact.pk).update(wrapped_key=None, key_id="", shredded_at=now)
    artifact.wrapped_key, artifact.key_id, artifact.shredded_at = None, "", now
    try:
        name = check_name(artifact.path)
    except FileNotFoundError:
        return
    store = artifact_storage()
    # The file goes only once the key's erasure is committed (a rollback keeps both).
    transaction.on_commit(lambda: store.delete(name))


def rewrap(artifact: Artifact, new: crypto.MasterKey) -> bool:
    """Re-wrap the data key under ``new`` without touching the data; False if nothing to do."""
    if not artifact.encrypted or artifact.wrapped_key is None or artifact.key_id == new.key_id:
        return False
    key = _data_key(artifact)
    wrapped = crypto.wrap_key(new, key, context=artifact.key_context)
    n = Artifact.objects.filter(pk=artifact.pk, key_id=artifact.key_id).update(
        key_id=new.key_id, wrapped_key=wrapped
    )
    return bool(n)

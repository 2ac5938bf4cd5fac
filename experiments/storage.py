"""Where artifact bytes live. One seam: every artifact byte is written by :func:`store_file`
(or re-stored by :func:`declassify`) and read by :func:`open_artifact`.

Encryption at rest: a run's outputs are restricted (team tier) when they are stored, so
:func:`store_file` encrypts them straight from the worker's file into the artifact store
(AES-256-GCM in authenticated 1 MiB chunks, :mod:`vault.crypto`) under a fresh data key,
which is kept only wrapped by the master key and bound to the artifact's identity. No
plaintext copy is ever written. :func:`open_artifact` decrypts as a stream, in memory, for the
permission-checked download view (and exports); :func:`declassify` re-stores an artifact in the
clear once a finding citing it is public; :func:`shred` destroys the data key.

SECURITY: artifacts are never served by the web server directly; only
:func:`open_artifact` reads them, and only permission-checked code calls it.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from experiments.models import Artifact, ArtifactKind, Run
from vault import crypto, keystore

CHUNK = 1 << 20


class ArtifactUnavailable(Exception):
    """The artifact's bytes cannot be produced. ``reason`` is ``"destroyed"`` (crypto-shredded),
    ``"key"`` (master key missing or wrong) or ``"corrupt"`` (authentication failed: tampered,
    truncated, reordered). Never answered with garbage bytes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def artifact_root() -> Path:
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


def _path(artifact: Artifact) -> Path:
    path = artifact_root() / artifact.path
    # SECURITY: the stored path is relative and written only by store_file; refuse anything
    # that would escape the storage root anyway.
    root = artifact_root().resolve()
    if root not in path.resolve().parents:
        raise FileNotFoundError(artifact.path)
    return path


def store_file(run: Run, src: Path, name: str, kind: str | None = None) -> Artifact:
    """Encrypt ``src`` into artifact storage for ``run`` and return the (unsaved) Artifact.

    SECURITY: the worker's plaintext file is read once and only ciphertext is written; the
    ``.part`` file is ciphertext too, renamed into place when complete."""
    rel = Path(run.project.slug) / str(run.pk) / name
    dest = artifact_root() / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    artifact = Artifact(
        run=run,
        project=run.project,
        name=name,
        kind=kind or guess_kind(name),
        path=str(rel),
        content_type=ctype,
        encrypted=True,
    )
    master = keystore.current()
    data_key = crypto.new_data_key()
    with src.open("rb", buffering=0) as raw, tmp.open("wb") as out:
        reader = _HashingReader(raw)
        crypto.encrypt_file(data_key, reader, out)  # type: ignore[arg-type]
    os.replace(tmp, dest)
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
    path = _path(artifact)
    f = path.open("rb")
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
    path = _path(artifact)
    tmp = path.with_name(path.name + ".clear.part")
    h = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for chunk in open_artifact(artifact):
                h.update(chunk)
                out.write(chunk)
    except (ArtifactUnavailable, FileNotFoundError):
        tmp.unlink(missing_ok=True)
        return False
    if h.hexdigest() != artifact.sha256:
        tmp.unlink(missing_ok=True)
        return False
    # File first, then row: a crash in between leaves a row saying "encrypted" over a clear
    # file, which fails decryption loudly (bad magic); the reverse order would serve
    # ciphertext as if it were the artifact.
    os.replace(tmp, path)
    Artifact.objects.filter(pk=artifact.pk).update(encrypted=False, key_id="", wrapped_key=None)
    artifact.encrypted, artifact.key_id, artifact.wrapped_key = False, "", None
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
        path = _path(artifact)
    except FileNotFoundError:
        return
    # The file goes only once the key's erasure is committed (a rollback keeps both).
    transaction.on_commit(lambda: path.unlink(missing_ok=True))


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

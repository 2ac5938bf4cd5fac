"""Building, storing and opening an export's archive.

:func:`build_export` is the body of the Celery task ``disclosure.tasks.build_export`` (in
:mod:`h3lab.jobs`; importable without a broker): it claims the queued :class:`Export` row,
re-checks the blockers (:mod:`disclosure.exports.rules`), writes the content files
(:mod:`disclosure.exports.formats`) into an archive with
:func:`disclosure.bundles.write_bundle`, signs it with the current key, and records the
outcome on the row and in the audit log. :func:`open_export` streams a finished archive for
its permission-checked download.

SECURITY: a partner copy holds partner-tier content, so its archive is encrypted at rest with
its own data key (wrapped by the master key, bound to the export) and decrypted only in memory
while it is downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.core.files.storage import Storage, storages
from django.db import transaction
from django.http import StreamingHttpResponse
from django.utils import timezone

from disclosure import audit, bundles, signing
from disclosure.exports.formats import bundle_files, citation_cff, ro_crate
from disclosure.exports.rules import (
    ExportRefused,
    describe_blockers,
    partner_blockers,
    public_blockers,
)
from disclosure.marks import MARK_KEY
from disclosure.models import Export, ExportKind, ExportStatus, RecipientMark
from disclosure.notifications import notify_partner_copy
from experiments import storage
from experiments.downloads import stream_file
from experiments.models import Finding
from experiments.storage_backends import open_stream, save_streamed
from vault import crypto, keystore

log = logging.getLogger(__name__)


class _Progress:
    """Counts file opens (each file is opened twice: hashed, then archived) and writes the
    fraction to the row at most every half second."""

    def __init__(self, export_id: int, total: int) -> None:
        self.export_id, self.total, self.done, self._last = export_id, max(1, total), 0, 0.0

    def tick(self) -> None:
        self.done += 1
        now = time.monotonic()
        if now - self._last >= 0.5:
            self._last = now
            fraction = min(0.99, self.done / self.total)
            Export.objects.filter(pk=self.export_id).update(progress=fraction)


def exports_root() -> Path:
    """The exports folder of the default filesystem storage (tests and backups look there)."""
    return Path(settings.EXPORTS_DIR)


def export_storage() -> Storage:
    """Where archives are kept (``STORAGES["exports"]``: a folder or an S3 bucket)."""
    return storages["exports"]


def build_export(export_id: int) -> str:
    """Build one queued export (the Celery task's body; importable without a broker). Claims
    the row with a conditional update, so a duplicate delivery does nothing."""
    claimed = Export.objects.filter(pk=export_id, status=ExportStatus.QUEUED).update(
        status=ExportStatus.RUNNING, started_at=timezone.now(), progress=0.0
    )
    if not claimed:
        return "skipped"
    export = Export.objects.select_related("recipient").get(pk=export_id)
    findings = list(
        export.findings.select_related("project", "created_by")
        .prefetch_related("decisions__policy", "snapshots")
        .order_by("pk")
    )
    if export.kind == ExportKind.PUBLIC:
        blockers = public_blockers(findings)
    else:
        blockers = partner_blockers(export.recipient, findings)
    try:
        if blockers:
            raise ExportRefused(blockers)
        mark = getattr(export, "mark", None) if export.kind == ExportKind.PARTNER else None
        _write(export, findings, mark)
    except ExportRefused as refused:
        _finish(export, ExportStatus.REFUSED, describe_blockers(refused.blockers), refused.blockers)
        return "refused"
    except Exception as exc:
        log.exception("export %s failed", export_id)
        _finish(export, ExportStatus.FAILED, f"{type(exc).__name__}: {exc}")
        return "failed"
    if export.kind == ExportKind.PARTNER and export.recipient is not None:
        notify_partner_copy(export)
    return "succeeded"


def _write(export: Export, findings: list[Finding], mark: RecipientMark | None) -> None:
    files = bundle_files(findings, mark=mark)
    partner = export.kind == ExportKind.PARTNER
    meta_files = [
        bundles.BundleFile(
            "ro-crate-metadata.json", ro_crate(export.name, findings, files, partner=partner)
        ),
        bundles.BundleFile("CITATION.cff", citation_cff(export.name, findings)),
    ]
    # SECURITY: every bundle carries a signed checkpoint of the audit log as it was when the
    # bundle was built, so copies held outside the platform can later prove (with
    # `manage.py verify_audit --checkpoint BUNDLE`) that the log was not rewritten since.
    audit_checkpoint = audit.current_checkpoint()
    if audit_checkpoint is not None:
        meta_files.append(
            bundles.BundleFile("audit-checkpoint.json", audit_checkpoint.to_json().encode())
        )
    progress = _Progress(export.pk, 2 * (len(files) + len(meta_files)))
    files = [
        bundles.LazyFile(f.path, data=f.data, source=f.source, opener=getattr(f, "opener", None),
                 on_open=progress.tick)
        for f in [*files, *meta_files]
    ]  # fmt: skip
    key = signing.current_key()
    private = signing.private_key(key)
    rel = f"{export.pk}-{export.name}.tar.gz" + (".enc" if partner else "")
    meta: dict[str, Any] = {
        "kind": export.kind,
        "export": export.pk,
        "findings": [str(f.public_id) for f in findings],
    }
    if mark is not None:
        meta.update(recipient=mark.recipient.get_username(), **{MARK_KEY: mark.token})
    fields: dict[str, Any] = {}

    def write(raw: BinaryIO) -> tuple[_HashingWriter, dict[str, object]]:
        # SECURITY: a partner copy holds partner-tier content: it is encrypted at rest like
        # every restricted artifact, and decrypted only for its permission-checked download.
        out: Any = raw
        if partner:
            master = keystore.current()
            data_key = crypto.new_data_key()
            out = crypto.EncryptingWriter(data_key, raw)
            fields.update(
                encrypted=True,
                master_key_id=master.key_id,
                wrapped_key=crypto.wrap_key(master, data_key, context=export.key_context),
            )
        hashing = _HashingWriter(out)
        manifest = bundles.write_bundle(
            hashing,  # type: ignore[arg-type]
            name=export.name,
            files=files,
            private_key=private,
            key_id=key.key_id,
            meta=meta,
        )
        if partner:
            out.close()
        return hashing, manifest

    # Streamed into the storage as it is written (S3: a multipart upload); the name is the
    # one the storage chose, and nothing is stored if building fails.
    rel, (hashing, manifest) = save_streamed(export_storage(), rel, write)
    with transaction.atomic():
        Export.objects.filter(pk=export.pk).update(
            status=ExportStatus.SUCCEEDED,
            progress=1.0,
            finished_at=timezone.now(),
            path=rel,
            size=hashing.size,
            sha256=hashing.sha256.hexdigest(),
            signing_key_id=key.key_id,
            message=f"{len(manifest['files'])} files signed by {key.key_id}",  # type: ignore[arg-type]
            **fields,
        )
        audit.record(
            None,
            "export.build",
            export,
            new={
                "kind": export.kind,
                "findings": [f.pk for f in findings],
                "recipient": mark.recipient.get_username() if mark else None,
                "mark": mark.token if mark else None,
                "signing_key": key.key_id,
                "sha256": hashing.sha256.hexdigest(),
            },
        )


class _HashingWriter:
    """Passes writes through while hashing the archive bytes (what the reader downloads)."""

    def __init__(self, out: Any) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()


def _finish(
    export: Export, status: str, message: str, blockers: dict[str, list[str]] | None = None
) -> None:
    with transaction.atomic():
        Export.objects.filter(pk=export.pk).update(
            status=status,
            finished_at=timezone.now(),
            message=message[:10_000],
            blockers=blockers or {},
        )
        audit.record(None, f"export.{status}", export, new={"message": message[:2000]})


def stream_export(export: Export, chunks: Iterator[bytes]) -> StreamingHttpResponse:
    """The download response for an export opened with :func:`open_export`: the one responder
    (and header set) every download uses, for the web page and the API alike."""
    return stream_file(
        chunks,
        filename=export.filename,
        content_type="application/gzip",
        size=export.size,
        sha256=export.sha256,
    )


def open_export(export: Export) -> Iterator[bytes]:
    """Stream the archive (decrypting a partner copy in memory). Raises FileNotFoundError or
    :class:`experiments.storage.ArtifactUnavailable` like artifact downloads."""
    if not export.path:
        raise FileNotFoundError(export.path)
    f = open_stream(export_storage(), export.path)
    if not export.encrypted:

        def plain() -> Iterator[bytes]:
            with f:
                while chunk := f.read(1 << 20):
                    yield chunk

        return plain()
    try:
        master = keystore.keyring().get(export.master_key_id)
        key = crypto.unwrap_key(
            master, bytes(export.wrapped_key or b""), context=export.key_context
        )
        stream = crypto.decrypt_stream(key, f)
        first = next(stream, b"")
    except (crypto.KeyError_, crypto.DecryptionError) as exc:
        f.close()
        raise storage.ArtifactUnavailable("key", f"export {export.pk}: {exc}") from None

    def decrypted() -> Iterator[bytes]:
        with f:
            yield first
            yield from stream

    return decrypted()

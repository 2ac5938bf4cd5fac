"""Publication bundles and partner copies: what may leave, and building the signed archive.

The governed steps follow the ``check_`` / ``do_`` pattern of :mod:`disclosure.actions`:
:func:`check_request_export` computes the *blockers* (per finding, exactly what stops it
leaving) and refuses with all of them, or records a queued :class:`Export` and sends its job
after commit; :func:`build_export` (the Celery task's body) re-checks the blockers, writes the
archive with :func:`disclosure.bundles.write_bundle`, signs it with the current key and records
the outcome. Every request, refusal, build and download is audited.

SECURITY: the set of findings comes from :mod:`disclosure.policy` only. A publication bundle
carries public findings with a recorded release decision to the public tier; a partner copy
carries exactly the partner-tier findings the recipient's own grant covers
(:func:`policy.partner_copy_findings`), each marked for that recipient.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import struct
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from disclosure import audit, bundles, marks, policy, signing
from disclosure.models import (
    Export,
    ExportKind,
    ExportStatus,
    RecipientMark,
    ReleaseDecision,
)
from experiments import storage
from experiments.models import Artifact, Finding, MetricPoint, Project, Tier
from vault import crypto, keystore

log = logging.getLogger(__name__)

EXPORT_TASK = "disclosure.tasks.build_export"
MARKABLE_MAX = 64 << 20  # files marked in memory (plots, CSV, JSON); larger ones stream as-is


class ExportRefused(Exception):
    """Raised with every blocker: ``{label: [reason, …]}`` (a label per finding, or
    ``"recipient"``)."""

    def __init__(self, blockers: dict[str, list[str]]) -> None:
        self.blockers = blockers
        super().__init__(describe(blockers))


def describe(blockers: dict[str, list[str]]) -> str:
    return "Export refused:\n" + "\n".join(
        f"- {label}: {'; '.join(reasons)}" for label, reasons in blockers.items()
    )


def _label(f: Finding) -> str:
    return f"finding #{f.pk} “{f.title}”"


# --- what may leave ---------------------------------------------------------------------------


def public_blockers(findings: Iterable[Finding]) -> dict[str, list[str]]:
    """Why each finding may not go into a publication bundle (empty: all may)."""
    findings = list(findings)
    decided = set(
        ReleaseDecision.objects.filter(finding__in=findings, to_tier=Tier.PUBLIC).values_list(
            "finding_id", flat=True
        )
    )
    blockers: dict[str, list[str]] = {}
    for f in findings:
        reasons = []
        if f.is_retracted:
            reasons.append("retracted")
        if f.tier != Tier.PUBLIC:
            reasons.append(f"at the {Tier(f.tier).label} tier, not public")
        if f.pk not in decided:
            reasons.append("no recorded release decision to the public tier")
        if reasons:
            blockers[_label(f)] = reasons
    return blockers


def partner_blockers(recipient: Any, findings: Iterable[Finding]) -> dict[str, list[str]]:
    """Why each finding may not go into ``recipient``'s partner copy (empty: all may)."""
    from disclosure.models import AgreementAcceptance, AgreementVersion

    findings = list(findings)
    blockers: dict[str, list[str]] = {}
    current = AgreementVersion.objects.current()
    if recipient is None or not recipient.is_active:
        return {"recipient": ["no active recipient"]}
    if current is None:
        blockers["recipient"] = ["no collaborator agreement is in force"]
    elif not AgreementAcceptance.objects.filter(user=recipient, agreement=current).exists():
        blockers["recipient"] = [
            f"{recipient.get_username()} has not accepted the current agreement v{current.version}"
        ]
    allowed = set(
        policy.partner_copy_findings(recipient)
        .filter(pk__in=[f.pk for f in findings])
        .values_list("pk", flat=True)
    )
    decided = set(
        ReleaseDecision.objects.filter(finding__in=findings, to_tier=Tier.PARTNERS).values_list(
            "finding_id", flat=True
        )
    )
    for f in findings:
        reasons = []
        if f.is_retracted:
            reasons.append("retracted")
        if f.tier != Tier.PARTNERS:
            reasons.append(
                f"at the {Tier(f.tier).label} tier (a partner copy carries partner-tier findings)"
            )
        elif f.pk not in allowed and "recipient" not in blockers:
            reasons.append(f"not covered by an active grant of {recipient.get_username()}")
        if f.pk not in decided:
            reasons.append("no recorded release decision to the partners tier")
        if reasons:
            blockers[_label(f)] = reasons
    if not findings and not blockers:
        blockers["recipient"] = [
            f"no partner-tier finding is granted to {recipient.get_username()}"
        ]
    return blockers


# --- requesting --------------------------------------------------------------------------------


def check_request_export(
    *,
    kind: str,
    findings: Iterable[Finding] = (),
    project: Project | None = None,
    recipient: Any = None,
    acting_user: Any,
) -> Export:
    """Validate and queue an export; raises :class:`ExportRefused` listing every blocker.

    ``findings`` is the selection; empty with ``project`` means the project's public-tier
    findings (publication) and, for a partner copy, every partner-tier finding the recipient's
    grant covers in projects the requester manages."""
    findings = list(findings)
    if not findings and project is not None and kind == ExportKind.PUBLIC:
        findings = list(project.findings.released())
    if kind == ExportKind.PARTNER and not findings:
        managed = policy.manageable_projects(acting_user).values("pk")
        findings = list(policy.partner_copy_findings(recipient).filter(project__in=managed))
    not_allowed = {f.project for f in findings if not policy.can_export(acting_user, f.project)}
    blockers: dict[str, list[str]] = {
        f"project {p.slug}": ["you do not manage releases of this project"] for p in not_allowed
    }
    if kind == ExportKind.PUBLIC:
        blockers.update(public_blockers(findings))
        if not findings:
            blockers["selection"] = ["no public finding selected"]
    else:
        blockers.update(partner_blockers(recipient, findings))
    if blockers:
        audit.record(
            acting_user,
            "export.refuse",
            None,
            new={
                "kind": kind,
                "findings": [f.pk for f in findings],
                "recipient": recipient.get_username() if recipient else None,
                "blockers": blockers,
            },
        )
        raise ExportRefused(blockers)
    return do_request_export(
        kind=kind, findings=findings, project=project, recipient=recipient, acting_user=acting_user
    )


def do_request_export(
    *,
    kind: str,
    findings: list[Finding],
    project: Project | None,
    recipient: Any,
    acting_user: Any,
    enqueue: bool = True,
) -> Export:
    with transaction.atomic():
        stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
        who = f"-for-{slugify(recipient.get_username())}" if recipient else ""
        export = Export.objects.create(
            kind=kind,
            created_by=acting_user if getattr(acting_user, "is_authenticated", False) else None,
            recipient=recipient if kind == ExportKind.PARTNER else None,
            project=project,
            name=f"h3lab-{kind}-{stamp}{who}",
        )
        export.findings.set(findings)
        if kind == ExportKind.PARTNER:
            secret = secrets.token_hex(32)
            RecipientMark.objects.create(
                export=export,
                recipient=recipient,
                secret=secret,
                token=metadata_token(secret),
            )
        audit.record(
            acting_user,
            "export.request",
            export,
            new={
                "kind": kind,
                "findings": [f.pk for f in findings],
                "recipient": recipient.get_username() if recipient else None,
            },
        )
        if enqueue:
            _enqueue(export.pk)
    return export


def _enqueue(export_id: int) -> None:
    def send() -> None:
        from h3lab.celery import app

        try:
            result = app.send_task(EXPORT_TASK, args=[export_id])
        except Exception:  # broker down: the export stays queued; the page says so
            log.exception("could not enqueue export %s", export_id)
            return
        Export.objects.filter(pk=export_id).update(celery_task_id=result.id)

    transaction.on_commit(send)


# --- recipient marks in files ------------------------------------------------------------------


def metadata_token(secret: str) -> str:
    """The token written into a partner copy's file metadata (JSON field, PNG tEXt chunk, CSV
    comment). Derived from the secret, so it names the copy without revealing the secret."""
    return hmac.new(secret.encode(), b"h3lab-metadata-mark", hashlib.sha256).hexdigest()[:24]


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARK_KEY = "h3lab-mark"


def mark_png(data: bytes, token: str) -> bytes:
    """Insert a ``tEXt`` chunk (``h3lab-mark``) after IHDR; the image is unchanged."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return data
    (ihdr_len,) = struct.unpack(">I", data[8:12])
    end = 8 + 12 + ihdr_len
    body = b"tEXt" + MARK_KEY.encode() + b"\x00" + token.encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return data[:end] + chunk + data[end:]


def png_marks(data: bytes) -> list[str]:
    found, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt" and body.startswith(MARK_KEY.encode() + b"\x00"):
            found.append(body.split(b"\x00", 1)[1].decode("latin-1"))
        pos += 12 + length
    return found


def mark_csv(data: bytes, token: str) -> bytes:
    return f"# {MARK_KEY}: {token}\n".encode() + data


def mark_json(data: bytes, token: str) -> bytes:
    try:
        doc = json.loads(data)
    except ValueError:
        return data
    if not isinstance(doc, dict):
        return data
    return json.dumps({**doc, MARK_KEY: token}, indent=2, sort_keys=True).encode() + b"\n"


# --- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LazyFile(bundles.BundleFile):
    """A bundle file whose bytes come from an opener (a decrypted artifact stream): never
    written to disk. ``on_open`` reports progress."""

    opener: Callable[[], BinaryIO] | None = None
    on_open: Callable[[], None] | None = None

    def open(self) -> BinaryIO:
        if self.on_open is not None:
            self.on_open()
        if self.opener is not None:
            return self.opener()
        return super().open()


def _slug(f: Finding) -> str:
    return f"{f.pk:05d}-{slugify(f.title)[:60] or 'finding'}"


def _author(f: Finding) -> str:
    user = f.created_by
    if user is None:
        return settings.H3LAB_PUBLISHER
    return user.get_full_name() or user.get_username()


def _markdown(f: Finding, decisions: list[ReleaseDecision], evidence: list[str], body: str) -> str:
    released = decisions[-1].decided_at.strftime("%Y-%m-%d") if decisions else ""
    lines = [
        f"# {f.title}",
        "",
        f"- Finding: #{f.pk} ({f.public_id})",
        f"- Project: {f.project.name}",
        f"- Tier: {Tier(f.tier).label}",
        f"- Released: {released}",
        f"- Author: {_author(f)}",
        "",
        body.strip(),
        "",
    ]
    if evidence:
        lines += ["## Evidence", "", *[f"- `{p}`" for p in evidence], ""]
    return "\n".join(lines)


def _finding_json(
    f: Finding, decisions: list[ReleaseDecision], evidence: list[str], token: str | None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": f.pk,
        "public_id": str(f.public_id),
        "title": f.title,
        "body_markdown": f.body,
        "project": {"slug": f.project.slug, "name": f.project.name},
        "tier": Tier(f.tier).label,
        "status": f.status,
        "author": _author(f),
        "created_at": f.created_at.isoformat(),
        "release_decisions": [
            {
                "from": Tier(d.from_tier).label,
                "to": Tier(d.to_tier).label,
                "decided_at": d.decided_at.isoformat(),
                "policy_version": d.policy.version,
                "approvals": d.approvals,
                "rationale": d.rationale,
            }
            for d in decisions
        ],
        "metric_snapshots": [
            {"run": s.run_id, "name": s.name, "step": s.step, "value": s.value}
            for s in f.snapshots.all()
        ],
        "evidence": evidence,
    }
    if token:
        doc[MARK_KEY] = token
    return doc


def _metrics_files(run_id: int, base: str, token: str | None) -> list[bundles.BundleFile]:
    points = list(
        MetricPoint.objects.filter(run_id=run_id)
        .order_by("name", "step")
        .values_list("name", "step", "value")
    )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["name", "step", "value"])
    writer.writerows(points)
    series: dict[str, list[list[float]]] = {}
    for name, step, value in points:
        series.setdefault(name, []).append([step, value])
    csv_bytes = buf.getvalue().encode()
    json_doc: dict[str, Any] = {"run": run_id, "series": series}
    if token:
        csv_bytes = mark_csv(csv_bytes, token)
        json_doc[MARK_KEY] = token
    return [
        bundles.BundleFile(f"{base}/metrics.csv", csv_bytes),
        bundles.BundleFile(
            f"{base}/metrics.json", json.dumps(json_doc, indent=2, sort_keys=True).encode()
        ),
    ]


def _artifact_file(a: Artifact, path: str, token: str | None) -> bundles.BundleFile:
    markable = token and a.size <= MARKABLE_MAX and a.name.endswith((".png", ".csv", ".json"))
    if markable:
        data = b"".join(storage.open_artifact(a))
        if a.name.endswith(".png"):
            data = mark_png(data, token)  # type: ignore[arg-type]
        elif a.name.endswith(".csv"):
            data = mark_csv(data, token)  # type: ignore[arg-type]
        else:
            data = mark_json(data, token)  # type: ignore[arg-type]
        return bundles.BundleFile(path, data)
    return LazyFile(path, opener=lambda: storage.open_artifact_file(a))


def bundle_files(
    findings: list[Finding], *, mark: RecipientMark | None = None
) -> list[bundles.BundleFile]:
    """Every content file of the bundle (findings, evidence, RO-Crate, CITATION.cff)."""
    token = mark.token if mark else None
    files: list[bundles.BundleFile] = []
    for f in findings:
        slug = _slug(f)
        decisions = [d for d in f.decisions.all()]
        evidence: list[bundles.BundleFile] = []
        for run in f.runs.all().order_by("pk"):
            base = f"evidence/{slug}/runs/{run.pk}"
            config = {"run": run.pk, "config": run.config}
            if token:
                config[MARK_KEY] = token
            evidence.append(
                bundles.BundleFile(
                    f"{base}/config.json", json.dumps(config, indent=2, sort_keys=True).encode()
                )
            )
            evidence += _metrics_files(run.pk, base, token)
        for a in f.artifacts.all().order_by("pk"):
            if a.is_shredded:
                raise ExportRefused({_label(f): [f"evidence {a.name} was destroyed"]})
            evidence.append(
                _artifact_file(a, f"evidence/{slug}/artifacts/{a.run_id}-{a.name}", token)
            )
        paths = [e.path for e in evidence]
        # The body is marked on its own, so each sentence's wording bits depend only on the
        # sentence (an excerpt of it traces the same wherever it is pasted).
        body = marks.mark_text(f.body, mark.secret) if mark is not None else f.body
        text = _markdown(f, decisions, paths, body)
        doc = _finding_json(f, decisions, paths, token)
        doc["body_markdown"] = body
        files.append(bundles.BundleFile(f"findings/{slug}.md", text.encode()))
        files.append(
            bundles.BundleFile(
                f"findings/{slug}.json", json.dumps(doc, indent=2, sort_keys=True).encode()
            )
        )
        files += evidence
    return files


def ro_crate(
    name: str, findings: list[Finding], files: list[bundles.BundleFile], *, partner: bool
) -> bytes:
    """RO-Crate 1.1 metadata (JSON-LD): the root dataset, one File entity per content file,
    authors, publisher, date and license."""
    today = timezone.now().strftime("%Y-%m-%d")
    license_id = settings.H3LAB_BUNDLE_LICENSE
    authors = sorted({_author(f) for f in findings})
    people = [{"@id": f"#author-{slugify(a)}", "@type": "Person", "name": a} for a in authors]
    parts = [
        {
            "@id": f.path,
            "@type": "File",
            "name": f.path.rsplit("/", 1)[-1],
            "encodingFormat": _mime(f.path),
            **({"contentSize": str(len(f.data))} if f.data is not None else {}),
        }
        for f in files
    ]
    parts.append({"@id": "CITATION.cff", "@type": "File", "name": "CITATION.cff"})
    graph: list[dict[str, Any]] = [
        {
            "@id": "ro-crate-metadata.json",
            "@type": "CreativeWork",
            "conformsTo": {"@id": "https://w3id.org/ro/crate/1.1"},
            "about": {"@id": "./"},
        },
        {
            "@id": "./",
            "@type": "Dataset",
            "name": name,
            "description": ("Partner copy (restricted; recipient-marked) of " if partner else "")
            + f"{len(findings)} finding(s) released by {settings.H3LAB_PUBLISHER}",
            "datePublished": today,
            "license": {"@id": license_id},
            "author": [{"@id": p["@id"]} for p in people],
            "publisher": {"@id": "#publisher"},
            "hasPart": [{"@id": p["@id"]} for p in parts],
        },
        {"@id": license_id, "@type": "CreativeWork", "name": license_id},
        {"@id": "#publisher", "@type": "Organization", "name": settings.H3LAB_PUBLISHER},
        *people,
        *parts,
    ]
    doc = {"@context": "https://w3id.org/ro/crate/1.1/context", "@graph": graph}
    return json.dumps(doc, indent=2).encode()


def _mime(path: str) -> str:
    import mimetypes

    if path.endswith(".md"):
        return "text/markdown"
    return mimetypes.guess_type(path)[0] or "application/octet-stream"


def citation_cff(name: str, findings: list[Finding]) -> bytes:
    """CITATION.cff 1.2.0 (YAML; strings written as JSON, which YAML reads as-is)."""
    q = json.dumps
    title = findings[0].title if len(findings) == 1 else f"{len(findings)} findings ({name})"
    lines = [
        "cff-version: 1.2.0",
        'message: "If you use these results, please cite them as below."',
        "type: dataset",
        f"title: {q(title)}",
        "authors:",
        *[f"  - name: {q(a)}" for a in sorted({_author(f) for f in findings})],
        f"  - name: {q(settings.H3LAB_PUBLISHER)}",
        f"date-released: {q(timezone.now().strftime('%Y-%m-%d'))}",
        f"license-url: {q(settings.H3LAB_BUNDLE_LICENSE)}",
        "keywords:",
        '  - "interpretability"',
        '  - "H3"',
    ]
    return ("\n".join(lines) + "\n").encode()


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
    return Path(settings.EXPORTS_DIR)


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
        _finish(export, ExportStatus.REFUSED, describe(refused.blockers), refused.blockers)
        return "refused"
    except Exception as exc:
        log.exception("export %s failed", export_id)
        _finish(export, ExportStatus.FAILED, f"{type(exc).__name__}: {exc}")
        return "failed"
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
    progress = _Progress(export.pk, 2 * (len(files) + len(meta_files)))
    files = [
        LazyFile(f.path, data=f.data, source=f.source, opener=getattr(f, "opener", None),
                 on_open=progress.tick)
        for f in [*files, *meta_files]
    ]  # fmt: skip
    key = signing.current_key()
    private = signing.private_key(key)
    root = exports_root()
    root.mkdir(parents=True, exist_ok=True)
    rel = f"{export.pk}-{export.name}.tar.gz" + (".enc" if partner else "")
    tmp = root / (rel + ".part")
    meta: dict[str, Any] = {
        "kind": export.kind,
        "export": export.pk,
        "findings": [str(f.public_id) for f in findings],
    }
    if mark is not None:
        meta.update(recipient=mark.recipient.get_username(), **{MARK_KEY: mark.token})
    fields: dict[str, Any] = {}
    with tmp.open("wb") as raw:
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
    os.replace(tmp, root / rel)
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


def open_export(export: Export) -> Iterator[bytes]:
    """Stream the archive (decrypting a partner copy in memory). Raises FileNotFoundError or
    :class:`experiments.storage.ArtifactUnavailable` like artifact downloads."""
    path = exports_root() / export.path
    if not export.path or not path.is_file():
        raise FileNotFoundError(export.path)
    f = path.open("rb")
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


def record_download(export: Export, acting_user: Any, ip: str | None) -> None:
    audit.record(
        acting_user,
        "export.download",
        export,
        new={"sha256": export.sha256, "recipient": getattr(export.recipient, "username", None)},
        ip=ip,
    )

"""Exports: requesting a publication bundle or a partner copy, and recording a download.

:func:`check_request_export` computes the blockers (:mod:`disclosure.exports.rules`: per
finding, exactly what stops it leaving) and refuses with all of them, or
:func:`do_request_export` records a queued :class:`Export` and sends its build job after commit
(:func:`disclosure.exports.build.build_export` does the work). Every request, refusal and
download is audited.

SECURITY: the set of findings comes from :mod:`disclosure.policy` only; a partner copy gets
its recipient mark (:mod:`disclosure.marks`) in the same transaction as its row.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable

from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from disclosure import audit, policy
from disclosure.exports.rules import ExportRefused, partner_blockers, public_blockers
from disclosure.marks import metadata_token
from disclosure.models import Export, ExportKind, RecipientMark
from experiments.dispatch import send_job
from experiments.models import Finding, Project
from experiments.users import ActingUser, User, user_or_system

log = logging.getLogger(__name__)

# The build task's registered name (defined in h3lab.jobs; the name predates the move and
# stays, so queued messages keep their meaning).
EXPORT_TASK = "disclosure.tasks.build_export"


def check_request_export(
    *,
    kind: str,
    findings: Iterable[Finding] = (),
    project: Project | None = None,
    recipient: User | None = None,
    acting_user: ActingUser,
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
    # Each project read and decided once (not once per finding: 1,000 queries for 1,000).
    projects = Project.objects.in_bulk({f.project_id for f in findings})
    not_allowed = {p for p in projects.values() if not policy.can_export(acting_user, p)}
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
    recipient: User | None,
    acting_user: ActingUser,
    enqueue: bool = True,
) -> Export:
    acting_user = user_or_system(acting_user)
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
            if recipient is None:  # check_request_export refuses a partner copy without one
                raise ValueError("a partner copy needs a recipient")
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
            _enqueue(export)
    return export


def _enqueue(export: Export) -> None:
    """Send the build job after commit, within a bounded time (:func:`send_job`); when the
    broker is down or hung the export stays queued with no task id and its page says so."""
    export_id = export.pk

    def send() -> None:
        task_id = send_job(EXPORT_TASK, [export_id])
        if task_id is not None:
            Export.objects.filter(pk=export_id).update(celery_task_id=task_id)
            export.celery_task_id = task_id

    transaction.on_commit(send)


def do_record_export_download(export: Export, *, acting_user: ActingUser, ip: str | None) -> None:
    """Audit that ``acting_user`` fetched the archive (called once the download may proceed)."""
    audit.record(
        acting_user,
        "export.download",
        export,
        new={"sha256": export.sha256, "recipient": getattr(export.recipient, "username", None)},
        ip=ip,
    )

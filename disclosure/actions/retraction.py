"""Retraction: a finding withdrawn from every reader, with a tombstone and (optionally)
its evidence crypto-shredded."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from disclosure import audit
from disclosure.models import (
    AuditEntry,
    NotificationKind,
    ReleaseRequest,
    RequestState,
)
from disclosure.notifications import notify, team_of
from experiments.models import Finding, FindingRevision, FindingStatus, RevisionState, Tier

User = get_user_model()


def readers_of(finding: Finding) -> list[Any]:
    """Everyone the audit log shows touching the finding or downloading its evidence."""
    artifact_ids = [str(pk) for pk in finding.artifacts.values_list("pk", flat=True)]
    actor_ids = (
        AuditEntry.objects.filter(
            Q(finding_id=finding.pk)
            | Q(
                action="artifact.download",
                object_type="experiments.artifact",
                object_id__in=artifact_ids,
            )
        )
        .exclude(actor__isnull=True)
        .values("actor_id")
    )
    return list(User.objects.filter(pk__in=actor_ids))


def do_retract_finding(
    finding: Finding, *, reason: str, destroy_data: bool = False, acting_user: Any
) -> bool:
    """Retract now: the finding leaves every list on the next request (its team keeps it, with
    a banner), a tombstone stays at its address, and everyone who accessed it is told.

    ``destroy_data`` also crypto-shreds the finding's evidence artifacts (their data keys are
    erased, see :func:`experiments.storage.shred`), recorded in the same audit entry. Files are
    removed only after the retraction commits."""
    if not reason.strip():
        raise ValidationError("Say why the finding is retracted.")
    now = timezone.now()
    with transaction.atomic():
        n = (
            Finding.objects.filter(pk=finding.pk)
            .exclude(status=FindingStatus.RETRACTED)
            .update(status=FindingStatus.RETRACTED, retracted_at=now, retraction_reason=reason)
        )
        if not n:
            return False
        old_status = finding.status
        finding.refresh_from_db()
        told = [u for u in readers_of(finding) + team_of(finding) if u != acting_user]
        FindingRevision.objects.filter(finding=finding, state=RevisionState.PENDING).update(
            state=RevisionState.WITHDRAWN, decided_at=now
        )
        ReleaseRequest.objects.pending().filter(finding=finding).update(
            state=RequestState.CANCELLED,
            hold_reason="the finding was retracted",
            last_checked_at=now,
        )
        shredded: list[dict[str, Any]] = []
        if destroy_data:
            shredded = _shred_evidence(finding)
        audit.record(
            acting_user,
            "finding.retract",
            finding,
            old={"status": old_status, "tier": Tier(finding.tier).label},
            new={"status": finding.status, "reason": reason, "destroyed": shredded},
        )
        notify(
            told,
            NotificationKind.RETRACTION,
            f"Finding #{finding.pk} was retracted",
            body=reason,
            url=finding.get_absolute_url(),
            finding=finding,
        )
    return True


def _shred_evidence(finding: Finding) -> list[dict[str, Any]]:
    """Crypto-shred every evidence artifact of ``finding``; returns what was destroyed (and
    which other findings also cited it, since they lose it too) for the audit entry."""
    from experiments import storage

    destroyed = []
    for artifact in finding.artifacts.filter(shredded_at__isnull=True).order_by("pk"):
        others = list(artifact.findings.exclude(pk=finding.pk).values_list("pk", flat=True))
        storage.shred(artifact)
        destroyed.append(
            {"artifact": artifact.pk, "name": artifact.name, "sha256": artifact.sha256,
             "also_cited_by": others}
        )  # fmt: skip
    return destroyed

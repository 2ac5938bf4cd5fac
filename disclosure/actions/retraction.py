"""Retraction: a finding withdrawn from every reader, with a tombstone and (optionally)
its evidence crypto-shredded."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from disclosure import audit, policy
from disclosure.models import (
    AuditEntry,
    NotificationKind,
    ReleaseRequest,
    RequestState,
)
from disclosure.notifications import notify, team_of
from experiments.models import (
    Artifact,
    Finding,
    FindingRevision,
    FindingStatus,
    RevisionState,
    Tier,
)
from experiments.users import ActingUser

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


def citing_findings(finding: Finding) -> list[Finding]:
    """Other findings above the team tier, not retracted, that cite ``finding``'s evidence
    artifacts, directly or through the runs that produced them: destroying that evidence would
    take it from readers outside the team."""
    artifacts = Artifact.objects.filter(findings=finding)
    return list(
        Finding.objects.exclude(pk=finding.pk)
        .exclude(status=FindingStatus.RETRACTED)
        .filter(tier__gt=Tier.TEAM)
        .filter(Q(artifacts__in=artifacts.values("pk")) | Q(runs__in=artifacts.values("run_id")))
        .distinct()
        .order_by("pk")
    )


def check_destroy_evidence(finding: Finding, *, acting_user: ActingUser) -> None:
    """Refuse to destroy evidence that a finding above the team tier also cites, naming those
    findings by number (and by title only where ``acting_user`` may read them)."""
    citing = citing_findings(finding)
    if not citing:
        return
    readable = set(
        policy.visible_findings(acting_user)
        .filter(pk__in=[f.pk for f in citing])
        .values_list("pk", flat=True)
    )
    names = [f"#{f.pk} “{f.title}”" if f.pk in readable else f"#{f.pk}" for f in citing]
    raise ValidationError(
        "The evidence cannot be destroyed: it is also cited by finding "
        + ", ".join(names)
        + ". Retract without destroying the evidence, or retract those findings first."
    )


def do_retract_finding(
    finding: Finding,
    *,
    reason: str,
    destroy_data: bool = False,
    destroy_reason: str = "",
    acting_user: ActingUser,
) -> bool:
    """Retract now: the finding leaves every list on the next request (its team keeps it, with
    a banner), a tombstone stays at its address, and everyone who accessed it is told.

    ``destroy_data`` also crypto-shreds the finding's evidence artifacts (their data keys are
    erased, see :func:`experiments.storage.shred`), recorded in the same audit entry with
    ``destroy_reason``. Files are removed only after the retraction commits. Evidence that a
    finding above the team tier also cites is never destroyed (:func:`check_destroy_evidence`):
    the whole retraction is refused instead, so nothing changes."""
    if not reason.strip():
        raise ValidationError("Say why the finding is retracted.")
    if destroy_data and not destroy_reason.strip():
        raise ValidationError("Say why the evidence must be destroyed.")
    now = timezone.now()
    with transaction.atomic():
        if destroy_data:  # inside the transaction: the refusal leaves nothing changed
            check_destroy_evidence(finding, acting_user=acting_user)
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
            new={
                "status": finding.status,
                "reason": reason,
                "destroyed": shredded,
                **({"destroy_reason": destroy_reason} if destroy_data else {}),
            },
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

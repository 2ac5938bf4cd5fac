"""Dual-use review of a finding: assessments, recusals, votes and objections."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from disclosure import audit
from disclosure.models import (
    Assessment,
    NotificationKind,
    Recusal,
    ReleaseRequest,
    RequestState,
    Vote,
    VoteKind,
)
from disclosure.notifications import notify, release_managers, team_of
from experiments.models import Finding, Tier

User = get_user_model()


def do_assess_finding(
    finding: Finding,
    *,
    capability_uplift: int,
    alignment_value: int,
    rationale: str,
    categories: list[str] | None = None,
    evidence_links: list[str] | None = None,
    acting_user: Any,
) -> Assessment:
    with transaction.atomic():
        existing = Assessment.objects.filter(finding=finding, reviewer=acting_user).first()
        old = (
            {
                "capability_uplift": existing.capability_uplift,
                "alignment_value": existing.alignment_value,
                "rationale": existing.rationale,
            }
            if existing
            else None
        )
        assessment, _ = Assessment.objects.update_or_create(
            finding=finding,
            reviewer=acting_user,
            defaults={
                "capability_uplift": capability_uplift,
                "alignment_value": alignment_value,
                "rationale": rationale,
                "categories": categories or [],
                "evidence_links": evidence_links or [],
                "updated_at": timezone.now(),
            },
        )
        audit.record(
            acting_user,
            "review.assess",
            assessment,
            old=old,
            new={
                "capability_uplift": capability_uplift,
                "alignment_value": alignment_value,
                "rationale": rationale,
                "categories": categories or [],
            },
        )
        notify(
            team_of(finding) + release_managers(),
            NotificationKind.ASSESSMENT,
            "New dual-use assessment of {finding}",
            url=finding.get_absolute_url(),
            finding=finding,
        )
    return assessment


def do_recuse(finding: Finding, *, reason: str, acting_user: Any) -> Recusal:
    with transaction.atomic():
        recusal, created = Recusal.objects.get_or_create(
            finding=finding, reviewer=acting_user, defaults={"reason": reason[:300]}
        )
        if created:
            audit.record(acting_user, "review.recuse", recusal, new={"reason": reason})
    return recusal


def do_vote(request: ReleaseRequest, *, kind: str, rationale: str = "", acting_user: Any) -> Vote:
    if request.state not in (RequestState.OPEN, RequestState.SCHEDULED):
        raise ValidationError("This request is no longer pending.")
    if kind == VoteKind.OBJECT and not rationale.strip():
        raise ValidationError("An objection needs a rationale.")
    with transaction.atomic():
        vote, created = Vote.objects.get_or_create(
            request=request,
            reviewer=acting_user,
            defaults={"finding": request.finding, "kind": kind, "rationale": rationale},
        )
        if not created:
            raise ValidationError("You have already voted on this request.")
        audit.record(
            acting_user,
            f"review.{kind}",
            vote,
            new={"to": Tier(request.target_tier).label, "rationale": rationale},
        )
        verb = "approved" if kind == VoteKind.APPROVE else "objected to"
        notify(
            team_of(request.finding) + release_managers(),
            NotificationKind.VOTE,
            f"{acting_user.get_username()} {verb} {{finding}} → {Tier(request.target_tier).label}",
            body=rationale,
            url=request.finding.get_absolute_url(),
            finding=request.finding,
        )
    return vote


def do_resolve_objection(vote: Vote, *, resolution: str, acting_user: Any) -> bool:
    with transaction.atomic():
        n = Vote.objects.filter(pk=vote.pk, kind=VoteKind.OBJECT, resolved_at__isnull=True).update(
            resolved_at=timezone.now(), resolved_by=acting_user, resolution=resolution
        )
        if n:
            audit.record(
                acting_user, "review.resolve_objection", vote, new={"resolution": resolution}
            )
    return bool(n)

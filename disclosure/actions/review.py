"""Dual-use review of a finding: assessments, recusals, votes and objections."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from disclosure import audit, policy
from disclosure.gates import evaluate
from disclosure.models import (
    Assessment,
    NotificationKind,
    ObjectionClearance,
    Recusal,
    ReleaseRequest,
    RequestState,
    Vote,
    VoteKind,
)
from disclosure.notifications import notify, release_managers, team_of
from experiments.models import Finding, Tier
from experiments.users import ActingUser, signed_in

User = get_user_model()


def do_assess_finding(
    finding: Finding,
    *,
    capability_uplift: int,
    alignment_value: int,
    rationale: str,
    categories: list[str] | None = None,
    evidence_links: list[str] | None = None,
    acting_user: ActingUser,
) -> Assessment:
    acting_user = signed_in(acting_user)
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


def do_recuse(finding: Finding, *, reason: str, acting_user: ActingUser) -> Recusal:
    acting_user = signed_in(acting_user)
    with transaction.atomic():
        recusal, created = Recusal.objects.get_or_create(
            finding=finding, reviewer=acting_user, defaults={"reason": reason[:300]}
        )
        if created:
            audit.record(acting_user, "review.recuse", recusal, new={"reason": reason})
    return recusal


def do_vote(
    request: ReleaseRequest, *, kind: str, rationale: str = "", acting_user: ActingUser
) -> Vote:
    acting_user = signed_in(acting_user)
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


def do_withdraw_objection(vote: Vote, *, reason: str = "", acting_user: ActingUser) -> bool:
    """The objection's author withdraws it; no one else can (see :func:`do_clear_objection`)."""
    if not policy.can_withdraw_objection(acting_user, vote):
        raise ValidationError("Only the objection's author may withdraw it.")
    with transaction.atomic():
        n = Vote.objects.filter(pk=vote.pk, kind=VoteKind.OBJECT, resolved_at__isnull=True).update(
            resolved_at=timezone.now(),
            resolved_by=acting_user,
            resolution=f"withdrawn by its author: {reason}"
            if reason
            else "withdrawn by its author",
        )
        if n:
            audit.record(acting_user, "review.withdraw_objection", vote, new={"reason": reason})
    return bool(n)


def objection_quorum(vote: Vote) -> int:
    """How many board members other than its author must agree to clear an objection:
    ``H3LAB_OBJECTION_QUORUM`` when set, else the approvals the release rule for the step
    requires (at least one)."""
    if settings.H3LAB_OBJECTION_QUORUM > 0:
        return int(settings.H3LAB_OBJECTION_QUORUM)
    rule = evaluate(vote.request).rule
    return max(1, rule.approvals_required if rule else 1)


def do_clear_objection(vote: Vote, *, rationale: str, acting_user: ActingUser) -> bool:
    """A board member (not the objection's author, see :func:`policy.can_clear_objection`)
    votes to clear an objection; when the quorum is reached it is resolved. Returns whether
    the objection is now cleared.

    SECURITY: separation of duties — one person, release managers included, never overrides
    an objection alone."""
    if not rationale.strip():
        raise ValidationError("Say why the objection should be cleared.")
    if not policy.can_clear_objection(acting_user, vote, vote.finding):
        raise ValidationError(
            "Only board members who may review the finding, other than the objection's author, "
            "may vote to clear it, once each."
        )
    with transaction.atomic():
        ObjectionClearance.objects.create(objection=vote, reviewer=acting_user, rationale=rationale)
        clearers = list(
            ObjectionClearance.objects.filter(objection=vote)
            .exclude(reviewer_id=vote.reviewer_id)
            .values_list("reviewer__username", flat=True)
            .order_by("reviewer__username")
        )
        quorum = objection_quorum(vote)
        audit.record(
            acting_user,
            "review.clear_objection_vote",
            vote,
            new={"rationale": rationale, "votes": len(clearers), "quorum": quorum},
        )
        if len(clearers) < quorum:
            return False
        n = Vote.objects.filter(pk=vote.pk, kind=VoteKind.OBJECT, resolved_at__isnull=True).update(
            resolved_at=timezone.now(),
            resolved_by=acting_user,
            resolution=f"cleared by {', '.join(clearers)}",
        )
        if n:
            audit.record(
                acting_user, "review.resolve_objection", vote, new={"cleared_by": clearers}
            )
    return bool(n)

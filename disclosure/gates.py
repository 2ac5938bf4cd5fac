""""""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from disclosure.models import (
    Assessment,
    CapabilityUplift,
    Recusal,
    ReleasePolicy,
    ReleaseRequest,
    ReleaseRule,
    Vote,
    VoteKind,
)
from experiments.models import Finding, Tier

User = get_user_model()


@dataclass(frozen=True)
class Gate:
    policy: ReleasePolicy | None
    rule: ReleaseRule | None
    uplift: int
    approvals: list[str]
    assessed: bool = False


def evaluate(request: ReleaseRequest) -> Gate:
    policy = ReleasePolicy.objects.current()
    ratings = list(
        Assessment.objects.filter(finding_id=request.finding_id).values_list(
            "capability_uplift", flat=True
        )
    )
    uplift = max(ratings, default=0)
    rule = policy.rule_for(request.target_tier, uplift) if policy else None
    recused = Recusal.objects.filter(finding_id=request.finding_id).values("reviewer_id")
    # Quorum is re-counted at decision time: only current board members who have not recused.
    approvals = (
        Vote.objects.filter(request=request, kind=VoteKind.APPROVE)
        .filter(reviewer__groups__name=settings.H3LAB_REVIEW_BOARD_GROUP)
        .exclude(reviewer_id__in=recused)
        .values_list("reviewer__username", flat=True)
        .order_by("reviewer__username")
    )
    return Gate(
        policy=policy, rule=rule, uplift=uplift, approvals=list(approvals), assessed=bool(ratings)
    )


def gate_reasons(
    request: ReleaseRequest, *, now: datetime | None = None, finding: Finding | None = None
) -> list[str]:
    """Why ``request`` may not be promoted now; empty means every gate passes. A page that has
    just read the request's finding passes it (``finding``) instead of having it read again;
    decisions (the actions) let it be read here, fresh."""
    now = now or timezone.now()
    if finding is None or finding.pk != request.finding_id:
        finding = Finding.objects.get(pk=request.finding_id)
    reasons: list[str] = []
    if finding.is_retracted:
        return ["the finding was retracted"]
    if finding.tier != request.from_tier:
        return [f"the finding is no longer at the {Tier(request.from_tier).label} tier"]
    gate = evaluate(request)
    if gate.policy is None or gate.rule is None:
        return ["no release policy rule covers this step"]
    rule = gate.rule
    if rule.blocked:
        reasons.append(
            f"policy v{gate.policy.version} never releases a finding rated "
            f"{uplift_label(gate.uplift)} capability uplift to {Tier(request.target_tier).label}"
        )
    if rule.requires_assessment and not gate.assessed:
        reasons.append("no dual-use assessment has been recorded")
    if len(gate.approvals) < rule.approvals_required:
        missing = rule.approvals_required - len(gate.approvals)
        reasons.append(
            f"awaiting {missing} more approval{'s' if missing != 1 else ''} "
            f"({len(gate.approvals)} of {rule.approvals_required} required approvals, "
            f"policy v{gate.policy.version})"
        )
    objections = Vote.objects.filter(
        request=request, kind=VoteKind.OBJECT, resolved_at__isnull=True
    ).count()
    if objections:
        reasons.append(f"{objections} unresolved objection{'s' if objections != 1 else ''}")
    for dep in finding.depends_on.all():
        if dep.is_retracted:
            reasons.append(f"depends on retracted finding #{dep.pk}")
        elif dep.tier < request.target_tier:
            reasons.append(
                f"depends on finding #{dep.pk}, still at the {Tier(dep.tier).label} tier"
            )
    window_ends = request.requested_at + timedelta(hours=rule.min_embargo_hours)
    if now < window_ends:
        reasons.append(f"observation window runs until {window_ends:%Y-%m-%d %H:%M} UTC")
    if request.target_tier == Tier.PUBLIC and (
        request.embargo_until is None or now < request.embargo_until
    ):
        reasons.append("the embargo has not passed")
    return reasons


def uplift_label(level: int) -> str:

    return CapabilityUplift(level).label

""""""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db.models import Exists, OuterRef, QuerySet, Subquery
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
    choose_rule,
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


@dataclass(frozen=True)
class GateInputs:
    """Everything :func:`gate_reasons` reads besides the request and its finding."""

    gate: Gate
    open_objections: int
    dependencies: list[Finding]


def read_gate_inputs(request: ReleaseRequest, finding: Finding) -> GateInputs:
    """The gate's inputs read fresh from the database (what every decision uses)."""
    objections = Vote.objects.filter(
        request=request, kind=VoteKind.OBJECT, resolved_at__isnull=True
    ).count()
    return GateInputs(evaluate(request), objections, list(finding.depends_on.all()))


def current_rules() -> list[ReleaseRule]:
    """The current release policy's rules, each joined to the policy (one query); empty when
    there is no policy or it has no rule."""
    return list(current_rules_query().select_related("policy"))


def current_rules_query() -> QuerySet[ReleaseRule]:
    """The current release policy's rules (a page reads them with its other lists)."""
    latest = ReleasePolicy.objects.order_by("-version").values("pk")[:1]
    return ReleaseRule.objects.filter(policy=Subquery(latest))


def on_board() -> Exists:
    """Annotation for a vote query: whether the voter is a board member now."""
    memberships = User.groups.through.objects.filter(
        user_id=OuterRef("reviewer_id"), group__name=settings.H3LAB_REVIEW_BOARD_GROUP
    )
    return Exists(memberships)


def gate_inputs_from(
    request: ReleaseRequest,
    *,
    rules: list[ReleaseRule],
    assessments: Iterable[Assessment],
    recusals: Iterable[Recusal],
    votes: Iterable[Vote],
    dependencies: list[Finding],
) -> GateInputs:
    """The same inputs as :func:`read_gate_inputs`, from rows a page has already read: the
    current rules (:func:`current_rules`), the finding's assessments and recusals, and the
    request's votes annotated with ``on_board`` (:func:`on_board`). Reaches the same answer
    (``tests/test_disclosure_release.py`` compares them)."""
    ratings = [a.capability_uplift for a in assessments]
    uplift = max(ratings, default=0)
    policy = rules[0].policy if rules else None
    recused = {r.reviewer_id for r in recusals}
    votes = list(votes)
    approvals = sorted(
        v.reviewer.username
        for v in votes
        if v.kind == VoteKind.APPROVE and v.on_board and v.reviewer_id not in recused  # type: ignore[attr-defined]
    )
    gate = Gate(
        policy=policy,
        rule=choose_rule(rules, request.target_tier, uplift),
        uplift=uplift,
        approvals=approvals,
        assessed=bool(ratings),
    )
    objections = sum(v.kind == VoteKind.OBJECT and v.resolved_at is None for v in votes)
    return GateInputs(gate, objections, dependencies)


def gate_reasons(
    request: ReleaseRequest,
    *,
    now: datetime | None = None,
    finding: Finding | None = None,
    inputs: GateInputs | None = None,
) -> list[str]:
    """Why ``request`` may not be promoted now; empty means every gate passes. A page that has
    just read the request's finding and the rows the gate needs passes them (``finding``,
    ``inputs`` from :func:`gate_inputs_from`) instead of having them read again; decisions
    (the actions) let them be read here, fresh."""
    now = now or timezone.now()
    if finding is None or finding.pk != request.finding_id:
        finding = Finding.objects.get(pk=request.finding_id)
    reasons: list[str] = []
    if finding.is_retracted:
        return ["the finding was retracted"]
    if finding.tier != request.from_tier:
        return [f"the finding is no longer at the {Tier(request.from_tier).label} tier"]
    if inputs is None:
        inputs = read_gate_inputs(request, finding)
    gate = inputs.gate
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
    objections = inputs.open_objections
    if objections:
        reasons.append(f"{objections} unresolved objection{'s' if objections != 1 else ''}")
    for dep in inputs.dependencies:
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

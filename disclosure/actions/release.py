"""Release steps: requests, scheduling, promotion through the gates, the scheduler's
step, and re-storing evidence in the clear once public."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from disclosure import audit
from disclosure.gates import evaluate, gate_reasons, uplift_label
from disclosure.models import (
    NotificationKind,
    ReleaseDecision,
    ReleaseRequest,
    RequestState,
)
from disclosure.notifications import notify, release_managers, reviewers, team_of
from experiments.actions.findings import do_apply_revision
from experiments.models import Finding, FindingStatus, Tier
from experiments.signals import is_user
from experiments.users import ActingUser, user_or_system

User = get_user_model()


def do_request_review(
    finding: Finding, *, rationale: str = "", acting_user: ActingUser
) -> ReleaseRequest:
    """Team → review. Under the default policy this step needs no approval, so it is decided at
    once (still through the same gates as every other step)."""
    request = do_request_release(finding, rationale=rationale, acting_user=acting_user)
    if not gate_reasons(request):
        do_promote(request, acting_user=acting_user)
    return request


def do_request_release(
    finding: Finding, *, rationale: str = "", acting_user: ActingUser
) -> ReleaseRequest:
    acting_user = user_or_system(acting_user)
    with transaction.atomic():
        # Re-read under a row lock: the caller's copy may predate a release or a retraction.
        finding = Finding.objects.select_for_update().select_related("project").get(pk=finding.pk)
        if finding.is_retracted or finding.tier >= Tier.PUBLIC:
            raise ValidationError("This finding cannot move up a tier.")
        if ReleaseRequest.objects.pending().filter(finding=finding).exists():
            raise ValidationError("A request for this finding is already pending.")
        request = ReleaseRequest.objects.create(
            finding=finding,
            from_tier=finding.tier,
            target_tier=finding.tier + 1,
            requested_by=acting_user,
            rationale=rationale,
        )
        audit.record(
            acting_user,
            "release.request",
            request,
            new={"from": Tier(request.from_tier).label, "to": Tier(request.target_tier).label},
            finding_id=finding.pk,
        )
        if request.target_tier == Tier.REVIEW:
            notify(
                reviewers(),
                NotificationKind.REVIEW_REQUESTED,
                "{finding} needs a dual-use assessment",
                url=finding.get_absolute_url(),
                finding=finding,
            )
        else:
            notify(
                reviewers() + release_managers(),
                NotificationKind.REVIEW_REQUESTED,
                f"Review requested: {{finding}} → {Tier(request.target_tier).label}",
                url=finding.get_absolute_url(),
                finding=finding,
            )
    return request


def check_schedule_release(
    request: ReleaseRequest, *, embargo_until: datetime, acting_user: ActingUser
) -> ReleaseRequest:
    if request.state not in (RequestState.OPEN, RequestState.SCHEDULED):
        raise ValidationError("This request is no longer pending.")
    if request.target_tier == Tier.REVIEW:
        raise ValidationError("The review step is decided when review is requested.")
    gate = evaluate(request)
    if gate.rule is None or gate.rule.blocked:
        raise ValidationError("The release policy does not allow this step.")
    earliest = request.requested_at + timedelta(hours=gate.rule.min_embargo_hours)
    if embargo_until < earliest:
        raise ValidationError(
            f"Policy v{gate.policy.version} requires an embargo until at least "  # type: ignore[union-attr]
            f"{earliest:%Y-%m-%d %H:%M} UTC."
        )
    return do_schedule_release(request, embargo_until=embargo_until, acting_user=acting_user)


def do_schedule_release(
    request: ReleaseRequest, *, embargo_until: datetime, acting_user: ActingUser
) -> ReleaseRequest:
    with transaction.atomic():
        old = {"state": request.state, "embargo_until": request.embargo_until}
        ReleaseRequest.objects.filter(pk=request.pk).update(
            state=RequestState.SCHEDULED, embargo_until=embargo_until, scheduled_by=acting_user
        )
        request.refresh_from_db()
        audit.record(
            acting_user,
            "release.schedule",
            request,
            old=old,
            new={"state": request.state, "embargo_until": embargo_until},
            finding_id=request.finding_id,
        )
    return request


def do_promote(
    request: ReleaseRequest, *, acting_user: ActingUser, now: datetime | None = None
) -> ReleaseDecision | None:
    """Move the finding up one tier if every gate still passes, recording an immutable
    decision. The finding's tier moves by a conditional update, so a duplicate scheduler run
    or a concurrent retraction leaves it alone. Returns None (and records why) if held."""
    now = now or timezone.now()
    with transaction.atomic():
        request = ReleaseRequest.objects.select_for_update().get(pk=request.pk)
        if request.state not in (RequestState.OPEN, RequestState.SCHEDULED):
            return None
        reasons = gate_reasons(request, now=now)
        if reasons:
            _hold(request, reasons, now)
            return None
        gate = evaluate(request)
        # gate_reasons() found no reasons just above, so a policy rule covers this step.
        if gate.policy is None or gate.rule is None:
            raise RuntimeError(f"release request {request.pk} passed its gates without a rule")
        status = (
            FindingStatus.RELEASED
            if request.target_tier == Tier.PUBLIC
            else FindingStatus.IN_REVIEW
        )
        at_tier = Finding.objects.filter(pk=request.finding_id, tier=request.from_tier).exclude(
            status=FindingStatus.RETRACTED
        )
        if request.revision is not None:
            # A revision keeps the tier: its content becomes what readers of that tier see.
            moved = at_tier.exists() and do_apply_revision(
                request.revision, acting_user=acting_user
            )
        else:
            moved = bool(at_tier.update(tier=request.target_tier, status=status, updated_at=now))
        if not moved:
            _hold(request, ["the finding changed while being released"], now)
            return None
        user = acting_user if is_user(acting_user) else None
        decision = ReleaseDecision.objects.create(
            finding_id=request.finding_id,
            request=request,
            from_tier=request.from_tier,
            to_tier=request.target_tier,
            decided_by=user,
            decided_at=now,
            policy=gate.policy,
            approvals=gate.approvals,
            rationale=(
                (f"revision {request.revision.number}: " if request.revision else "")
                + f"{len(gate.approvals)} approval(s) of {gate.rule.approvals_required} required "
                f"under policy v{gate.policy.version}; highest capability uplift "
                f"{uplift_label(gate.uplift)}; no open objections; dependencies released"
                + ("" if user else "; promoted by the scheduler at the embargo instant")
            ),
        )
        ReleaseRequest.objects.filter(pk=request.pk).update(
            state=RequestState.RELEASED, last_checked_at=now, hold_reason=""
        )
        audit.record(
            acting_user,
            "release.decide",
            decision,
            old={"tier": Tier(request.from_tier).label},
            new={
                "tier": Tier(request.target_tier).label,
                "policy": gate.policy.version,
                "approvals": gate.approvals,
                "revision": request.revision.number if request.revision else None,
            },
        )
        finding = Finding.objects.select_related("project__group").get(pk=request.finding_id)
        if request.target_tier == Tier.PUBLIC:
            # Public evidence needs no encryption at rest: re-store it in the clear once the
            # decision is committed (never before: a rollback would leave it public on disk).
            finding_id = finding.pk
            transaction.on_commit(lambda: declassify_evidence(finding_id))
        notify(
            team_of(finding)
            + release_managers()
            + (reviewers() if request.target_tier > 1 else []),
            NotificationKind.DECISION,
            (
                f"Revision {request.revision.number} of {{finding}} is approved"
                if request.revision
                else f"{{finding}} is now at the {Tier(request.target_tier).label} tier"
            ),
            url=finding.get_absolute_url(),
            finding=finding,
        )
    return decision


def _hold(request: ReleaseRequest, reasons: list[str], now: datetime) -> None:
    reason = "; ".join(reasons)
    changed = reason != request.hold_reason
    ReleaseRequest.objects.filter(pk=request.pk).update(last_checked_at=now, hold_reason=reason)
    request.hold_reason, request.last_checked_at = reason, now
    if changed:  # one entry and one notice per distinct reason, not one per scheduler tick
        audit.record(
            None, "release.hold", request, new={"reasons": reasons}, finding_id=request.finding_id
        )
        if request.state == RequestState.SCHEDULED:
            finding = request.finding
            notify(
                release_managers() + team_of(finding),
                NotificationKind.RELEASE_HELD,
                "Release of {finding} held back",
                body=reason,
                url=finding.get_absolute_url(),
                finding=finding,
            )


def do_release_due(*, now: datetime | None = None) -> list[tuple[int, str]]:
    """The scheduler's step: every scheduled request whose embargo instant has passed is
    re-checked and promoted, or held with its reasons. Never promotes without the gates."""
    now = now or timezone.now()
    results: list[tuple[int, str]] = []
    for request in ReleaseRequest.objects.due(now).order_by("embargo_until", "pk"):
        decision = do_promote(request, acting_user=None, now=now)
        request.refresh_from_db()
        results.append((request.pk, "released" if decision else f"held: {request.hold_reason}"))
    return results


def declassify_evidence(finding_id: int) -> list[int]:
    """Re-store the evidence of a finding that reached the public tier in the clear (run after
    the release commits). Idempotent; an artifact that cannot be decrypted stays encrypted and
    is still served decrypted. Each re-stored artifact is audited."""
    from experiments import storage

    finding = Finding.objects.get(pk=finding_id)
    if finding.tier != Tier.PUBLIC or finding.is_retracted:
        return []
    done = []
    for artifact in finding.artifacts.filter(encrypted=True, shredded_at__isnull=True):
        if storage.declassify(artifact):
            audit.record(
                None, "artifact.declassify", artifact,
                new={"sha256": artifact.sha256, "public_finding": finding_id},
                finding_id=finding_id,
            )  # fmt: skip
            done.append(artifact.pk)
    return done

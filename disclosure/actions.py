"""Every governed state change of the disclosure app.

``do_*`` functions perform one change inside a transaction and append its audit entry;
``check_*`` functions validate input, raising :class:`ValidationError`, then call the ``do_*``.
Views, admin actions, management commands and Celery tasks call these; nothing else saves
disclosure rows or moves a finding's tier. Time comes from :func:`django.utils.timezone.now`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from disclosure import audit
from disclosure.models import (
    AgreementAcceptance,
    AgreementVersion,
    Assessment,
    AuditEntry,
    Grant,
    Notification,
    NotificationKind,
    Recusal,
    ReleaseDecision,
    ReleasePolicy,
    ReleaseRequest,
    ReleaseRule,
    RequestState,
    Vote,
    VoteKind,
)
from disclosure.notifications import notify, release_managers, reviewers
from experiments.models import Finding, FindingStatus, Project, Tier

User = get_user_model()


def _tier(t: int) -> str:
    return Tier(t).label


def _team(finding: Finding) -> list[Any]:
    return list(finding.project.group.user_set.all())


# --- agreements --------------------------------------------------------------------------------


def do_publish_agreement(
    *, title: str, text: str, effective_at: datetime | None = None, acting_user: Any
) -> AgreementVersion:
    """Publish the next agreement version. Once it takes effect, every collaborator must accept
    it before their grants give access again; they are told now."""
    with transaction.atomic():
        last = AgreementVersion.objects.order_by("-version").first()
        agreement = AgreementVersion.objects.create(
            version=(last.version + 1) if last else 1,
            title=title,
            text=text,
            effective_at=effective_at or timezone.now(),
        )
        audit.record(
            acting_user, "agreement.publish", agreement, new={"version": agreement.version}
        )
        notify(
            grantees(Grant.objects.active()),
            NotificationKind.AGREEMENT,
            f"New collaborator agreement v{agreement.version}: accept it to keep your access",
            url="/access/",
        )
    return agreement


def do_accept_agreement(
    user: Any, agreement: AgreementVersion, *, ip: str | None = None, acting_user: Any
) -> AgreementAcceptance:
    if acting_user != user:
        raise ValidationError("An agreement is accepted by the person it binds.")
    with transaction.atomic():
        acceptance, created = AgreementAcceptance.objects.get_or_create(
            user=user, agreement=agreement, defaults={"ip": ip}
        )
        if created:
            audit.record(
                acting_user,
                "agreement.accept",
                agreement,
                new={"version": agreement.version},
                ip=ip,
            )
    return acceptance


# --- grants ------------------------------------------------------------------------------------


def grantees(grants: Iterable[Grant]) -> list[Any]:
    users: dict[int, Any] = {}
    for g in grants:
        if g.user is not None:
            users[g.user.pk] = g.user
        else:
            assert g.group is not None  # a grant names exactly one user or one group
            for u in g.group.user_set.all():
                users[u.pk] = u
    return list(users.values())


def check_give_grant(
    *,
    user: Any = None,
    group: Group | None = None,
    project: Project | None = None,
    finding: Finding | None = None,
    max_tier: int = Tier.PARTNERS,
    expires_at: datetime,
    note: str = "",
    acting_user: Any,
) -> Grant:
    if (user is None) == (group is None):
        raise ValidationError("Grant to exactly one user or one group.")
    if (project is None) == (finding is None):
        raise ValidationError("Grant a whole project or one finding.")
    if max_tier not in (Tier.REVIEW, Tier.PARTNERS):
        raise ValidationError("A grant covers the review or partners tier.")
    if expires_at <= timezone.now():
        raise ValidationError("The expiry must be in the future.")
    if AgreementVersion.objects.current() is None:
        raise ValidationError("Publish a collaborator agreement first.")
    return do_give_grant(
        user=user,
        group=group,
        project=project,
        finding=finding,
        max_tier=max_tier,
        expires_at=expires_at,
        note=note,
        acting_user=acting_user,
    )


def do_give_grant(
    *,
    user: Any = None,
    group: Group | None = None,
    project: Project | None = None,
    finding: Finding | None = None,
    max_tier: int = Tier.PARTNERS,
    expires_at: datetime,
    note: str = "",
    acting_user: Any,
) -> Grant:
    with transaction.atomic():
        agreement = AgreementVersion.objects.current()
        if agreement is None:  # check_give_grant() checks this first; the column is NOT NULL
            raise ValidationError("Publish a collaborator agreement first.")
        grant = Grant.objects.create(
            user=user,
            group=group,
            project=project,
            finding=finding,
            max_tier=max_tier,
            expires_at=expires_at,
            note=note,
            agreement=agreement,
            granted_by=acting_user if getattr(acting_user, "is_authenticated", False) else None,
        )
        audit.record(
            acting_user,
            "grant.give",
            grant,
            new={
                "grantee": str(grant.grantee),
                "scope": str(grant.scope),
                "max_tier": _tier(max_tier),
                "expires_at": expires_at,
                "agreement": grant.agreement.version,
            },
            finding_id=finding.pk if finding else None,
        )
        notify(
            grantees([grant]),
            NotificationKind.GRANT_GIVEN,
            f"You were given {_tier(max_tier)}-tier access to {grant.scope} "
            f"until {expires_at:%Y-%m-%d %H:%M} UTC",
            body="Accept the current collaborator agreement on your access page to use it.",
            url="/access/",
        )
    return grant


def do_revoke_grant(grant: Grant, *, reason: str = "", acting_user: Any) -> bool:
    """Revoke now; the next request of the grantee no longer sees the findings."""
    with transaction.atomic():
        n = Grant.objects.filter(pk=grant.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_by=acting_user, revoke_reason=reason[:300]
        )
        if n:
            grant.refresh_from_db()
            audit.record(
                acting_user,
                "grant.revoke",
                grant,
                old={"expires_at": grant.expires_at},
                new={"reason": reason},
                finding_id=grant.finding_id,
            )
            notify(
                grantees([grant]),
                NotificationKind.GRANT_REVOKED,
                f"Your access to {grant.scope} was revoked",
                body=reason,
                url="/access/",
            )
    return bool(n)


def do_warn_expiring_grants(*, now: datetime | None = None) -> int:
    """Warn grantees once, ``H3LAB_GRANT_WARNING_DAYS`` before a grant lapses, and tell them
    once when it has lapsed. Conditional updates make a rerun (or a duplicate task) a no-op."""
    now = now or timezone.now()
    soon = now + timedelta(days=settings.H3LAB_GRANT_WARNING_DAYS)
    count = 0
    expiring = Grant.objects.active(now).filter(expires_at__lte=soon, expiry_warned_at__isnull=True)
    for grant in expiring.select_related("user", "group"):
        with transaction.atomic():
            if Grant.objects.filter(pk=grant.pk, expiry_warned_at__isnull=True).update(
                expiry_warned_at=now
            ):
                audit.record(
                    None, "grant.expiry_warning", grant, new={"expires_at": grant.expires_at}
                )
                notify(
                    grantees([grant]),
                    NotificationKind.GRANT_EXPIRING,
                    f"Your access to {grant.scope} expires {grant.expires_at:%Y-%m-%d %H:%M} UTC",
                    url="/access/",
                )
                count += 1
    lapsed = Grant.objects.filter(
        revoked_at__isnull=True, expires_at__lte=now, expiry_notified_at__isnull=True
    )
    for grant in lapsed.select_related("user", "group"):
        with transaction.atomic():
            if Grant.objects.filter(pk=grant.pk, expiry_notified_at__isnull=True).update(
                expiry_notified_at=now
            ):
                audit.record(None, "grant.expire", grant, old={"expires_at": grant.expires_at})
                notify(
                    grantees([grant]),
                    NotificationKind.GRANT_EXPIRED,
                    f"Your access to {grant.scope} has expired",
                    url="/access/",
                )
                count += 1
    return count


# --- review ------------------------------------------------------------------------------------


def do_request_review(finding: Finding, *, rationale: str = "", acting_user: Any) -> ReleaseRequest:
    """Team → review. Under the default policy this step needs no approval, so it is decided at
    once (still through the same gates as every other step)."""
    request = do_request_release(finding, rationale=rationale, acting_user=acting_user)
    if not gate_reasons(request):
        do_promote(request, acting_user=acting_user)
    return request


def do_request_release(
    finding: Finding, *, rationale: str = "", acting_user: Any
) -> ReleaseRequest:
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
            new={"from": _tier(request.from_tier), "to": _tier(request.target_tier)},
            finding_id=finding.pk,
        )
        if request.target_tier > Tier.REVIEW:
            notify(
                reviewers() + release_managers(),
                NotificationKind.REVIEW_REQUESTED,
                f"Review requested: {finding.title} → {_tier(request.target_tier)}",
                url=finding.get_absolute_url(),
            )
    return request


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
            _team(finding) + release_managers(),
            NotificationKind.ASSESSMENT,
            f"New dual-use assessment of {finding.title}",
            url=finding.get_absolute_url(),
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
            new={"to": _tier(request.target_tier), "rationale": rationale},
        )
        verb = "approved" if kind == VoteKind.APPROVE else "objected to"
        notify(
            _team(request.finding) + release_managers(),
            NotificationKind.VOTE,
            f"{acting_user.get_username()} {verb} {request.finding.title}"
            f" → {_tier(request.target_tier)}",
            body=rationale,
            url=request.finding.get_absolute_url(),
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


# --- release gates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    policy: ReleasePolicy | None
    rule: ReleaseRule | None
    uplift: int
    approvals: list[str]


def evaluate(request: ReleaseRequest) -> Gate:
    policy = ReleasePolicy.objects.current()
    ratings = Assessment.objects.filter(finding_id=request.finding_id).values_list(
        "capability_uplift", flat=True
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
    return Gate(policy=policy, rule=rule, uplift=uplift, approvals=list(approvals))


def gate_reasons(request: ReleaseRequest, *, now: datetime | None = None) -> list[str]:
    """Why ``request`` may not be promoted now; empty means every gate passes."""
    now = now or timezone.now()
    finding = Finding.objects.get(pk=request.finding_id)
    reasons: list[str] = []
    if finding.is_retracted:
        return ["the finding was retracted"]
    if finding.tier != request.from_tier:
        return [f"the finding is no longer at the {_tier(request.from_tier)} tier"]
    gate = evaluate(request)
    if gate.policy is None or gate.rule is None:
        return ["no release policy rule covers this step"]
    rule = gate.rule
    if rule.blocked:
        reasons.append(
            f"policy v{gate.policy.version} never releases a finding rated "
            f"{_uplift(gate.uplift)} capability uplift to {_tier(request.target_tier)}"
        )
    if rule.requires_assessment and not Assessment.objects.filter(finding=finding).exists():
        reasons.append("no dual-use assessment has been recorded")
    if len(gate.approvals) < rule.approvals_required:
        reasons.append(
            f"{len(gate.approvals)} of {rule.approvals_required} required approvals "
            f"(policy v{gate.policy.version})"
        )
    objections = Vote.objects.filter(
        request=request, kind=VoteKind.OBJECT, resolved_at__isnull=True
    ).count()
    if objections:
        reasons.append(f"{objections} unresolved objection(s)")
    for dep in finding.depends_on.all():
        if dep.is_retracted:
            reasons.append(f"depends on retracted finding #{dep.pk}")
        elif dep.tier < request.target_tier:
            reasons.append(f"depends on finding #{dep.pk}, still at the {_tier(dep.tier)} tier")
    window_ends = request.requested_at + timedelta(hours=rule.min_embargo_hours)
    if now < window_ends:
        reasons.append(f"observation window runs until {window_ends:%Y-%m-%d %H:%M} UTC")
    if request.target_tier == Tier.PUBLIC and (
        request.embargo_until is None or now < request.embargo_until
    ):
        reasons.append("the embargo has not passed")
    return reasons


def _uplift(level: int) -> str:
    from disclosure.models import CapabilityUplift

    return CapabilityUplift(level).label


def check_schedule_release(
    request: ReleaseRequest, *, embargo_until: datetime, acting_user: Any
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
    request: ReleaseRequest, *, embargo_until: datetime, acting_user: Any
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
    request: ReleaseRequest, *, acting_user: Any, now: datetime | None = None
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
        assert gate.policy is not None and gate.rule is not None
        status = (
            FindingStatus.RELEASED
            if request.target_tier == Tier.PUBLIC
            else FindingStatus.IN_REVIEW
        )
        moved = (
            Finding.objects.filter(pk=request.finding_id, tier=request.from_tier)
            .exclude(status=FindingStatus.RETRACTED)
            .update(tier=request.target_tier, status=status, updated_at=now)
        )
        if not moved:
            _hold(request, ["the finding changed while being released"], now)
            return None
        user = acting_user if getattr(acting_user, "is_authenticated", False) else None
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
                f"{len(gate.approvals)} approval(s) of {gate.rule.approvals_required} required "
                f"under policy v{gate.policy.version}; highest capability uplift "
                f"{_uplift(gate.uplift)}; no open objections; dependencies released"
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
            old={"tier": _tier(request.from_tier)},
            new={
                "tier": _tier(request.target_tier),
                "policy": gate.policy.version,
                "approvals": gate.approvals,
            },
        )
        finding = Finding.objects.select_related("project__group").get(pk=request.finding_id)
        if request.target_tier == Tier.PUBLIC:
            # Public evidence needs no encryption at rest: re-store it in the clear once the
            # decision is committed (never before: a rollback would leave it public on disk).
            finding_id = finding.pk
            transaction.on_commit(lambda: declassify_evidence(finding_id))
        notify(
            _team(finding) + release_managers() + (reviewers() if request.target_tier > 1 else []),
            NotificationKind.DECISION,
            f"{finding.title} is now at the {_tier(request.target_tier)} tier",
            url=finding.get_absolute_url(),
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
                release_managers() + _team(finding),
                NotificationKind.RELEASE_HELD,
                f"Release of {finding.title} held back",
                body=reason,
                url=finding.get_absolute_url(),
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


# --- retraction --------------------------------------------------------------------------------


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
        told = [u for u in readers_of(finding) + _team(finding) if u != acting_user]
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
            old={"status": old_status, "tier": _tier(finding.tier)},
            new={"status": finding.status, "reason": reason, "destroyed": shredded},
        )
        notify(
            told,
            NotificationKind.RETRACTION,
            f"Finding #{finding.pk} was retracted",
            body=reason,
            url=finding.get_absolute_url(),
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


# --- inbox -------------------------------------------------------------------------------------


def do_mark_notifications_read(user: Any, *, acting_user: Any) -> int:
    # Not governed state: the inbox belongs to its reader, so no audit entry.
    return Notification.objects.filter(user=user, read_at__isnull=True).update(
        read_at=timezone.now()
    )


# --- keys ----------------------------------------------------------------------------------------


def do_rewrap_keys(*, acting_user: Any) -> dict[str, int]:
    """Re-wrap every data key (artifacts, partner-copy exports) and signing key under the current
    master key, without re-encrypting any data. Old master keys must still be configured to
    read what they wrapped; afterwards they can be removed. Idempotent and resumable: each row
    is updated on its own, conditionally on its old key id."""
    from disclosure import keystore
    from experiments import storage
    from experiments.models import Artifact

    current = keystore.current()
    counts = {"artifacts": 0, "exports": 0, "signing_keys": 0}
    stale = Artifact.objects.filter(encrypted=True, wrapped_key__isnull=False)
    for artifact in stale.exclude(key_id=current.key_id).iterator(chunk_size=500):
        counts["artifacts"] += storage.rewrap(artifact, current)
    counts.update(_rewrap_disclosure_keys(current))
    audit.record(acting_user, "masterkey.rotate", None, new={"key_id": current.key_id, **counts})
    return counts


def _rewrap_disclosure_keys(current: Any) -> dict[str, int]:
    from disclosure import exports, signing

    return {"exports": exports.rewrap_all(current), "signing_keys": signing.rewrap_all(current)}

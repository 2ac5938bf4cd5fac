"""Tiered access grants to collaborators: giving, approving, revoking, expiry notices.

Separation of duties: nobody grants access to themselves or to a group they belong to; a grant
by a delegated project manager waits for a release manager's approval
(:func:`disclosure.policy.grant_needs_approval`); no grant outlives ``H3LAB_GRANT_MAX_DAYS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from disclosure import audit, policy
from disclosure.models import (
    FINDING_PLACEHOLDER,
    AgreementVersion,
    Grant,
    GrantApproval,
    GroupClearance,
    NotificationKind,
)
from disclosure.notifications import notify, release_managers
from experiments.models import Finding, Project, Tier
from experiments.users import ActingUser, User, user_or_system


def grantees(grants: Iterable[Grant]) -> list[Any]:
    users: dict[int, Any] = {}
    for g in grants:
        if g.user is not None:
            users[g.user.pk] = g.user
        else:
            if g.group is None:  # a grant names exactly one user or one group (a constraint)
                raise RuntimeError(f"grant {g.pk} names neither a user nor a group")
            for u in g.group.user_set.all():
                users[u.pk] = u
    return list(users.values())


def _scope(grant: Grant) -> str:
    """How a notice names a grant's scope: the project, or ``{finding}`` (named at read time)."""
    return str(grant.project) if grant.project is not None else FINDING_PLACEHOLDER


def check_give_grant(
    *,
    user: User | None = None,
    group: Group | None = None,
    project: Project | None = None,
    finding: Finding | None = None,
    max_tier: int = Tier.PARTNERS,
    expires_at: datetime,
    note: str = "",
    acting_user: ActingUser,
) -> Grant:
    if (user is None) == (group is None):
        raise ValidationError("Grant to exactly one user or one group.")
    if (project is None) == (finding is None):
        raise ValidationError("Grant a whole project or one finding.")
    if max_tier not in (Tier.REVIEW, Tier.PARTNERS):
        raise ValidationError("A grant covers the review or partners tier.")
    now = timezone.now()
    if expires_at <= now:
        raise ValidationError("The expiry must be in the future.")
    max_days = settings.H3LAB_GRANT_MAX_DAYS
    if expires_at > now + timedelta(days=max_days):
        raise ValidationError(f"A grant lasts at most {max_days} days; give a nearer expiry.")
    if policy.is_grantee(acting_user, grantee_user=user, grantee_group=group):
        raise ValidationError(
            "You cannot grant access to yourself or to a group you belong to; "
            "ask another release manager."
        )
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
    user: User | None = None,
    group: Group | None = None,
    project: Project | None = None,
    finding: Finding | None = None,
    max_tier: int = Tier.PARTNERS,
    expires_at: datetime,
    note: str = "",
    acting_user: ActingUser,
) -> Grant:
    """Give the grant; when a delegated manager gives it, it waits for a release manager's
    approval (:func:`do_approve_grant`) before it gives access."""
    acting_user = user_or_system(acting_user)
    pending = policy.grant_needs_approval(acting_user, max_tier)
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
            approval=GrantApproval.PENDING if pending else GrantApproval.NOT_NEEDED,
        )
        audit.record(
            acting_user,
            "grant.give",
            grant,
            new={
                "grantee": str(grant.grantee),
                "scope": str(grant.scope),
                "max_tier": Tier(max_tier).label,
                "expires_at": expires_at,
                "agreement": grant.agreement.version,
                "approval": grant.approval,
            },
            finding_id=finding.pk if finding else None,
        )
        if pending:
            approvers = [u for u in release_managers() if policy.can_approve_grant(u, grant)]
            notify(
                approvers,
                NotificationKind.GRANT_GIVEN,
                f"A grant of {Tier(max_tier).label}-tier access awaits your approval",
                url="/grants/",
            )
        else:
            _notify_given(grant)
    return grant


def _notify_given(grant: Grant) -> None:
    notify(
        grantees([grant]),
        NotificationKind.GRANT_GIVEN,
        f"You were given {Tier(grant.max_tier).label}-tier access to {_scope(grant)} "
        f"until {grant.expires_at:%Y-%m-%d %H:%M} UTC",
        body="Accept the current collaborator agreement on your access page to use it.",
        url="/access/",
        finding=grant.finding,
    )


def do_approve_grant(
    grant: Grant, *, approve: bool, note: str = "", acting_user: ActingUser
) -> bool:
    """A release manager approves (the grant takes effect now) or declines a grant that waits
    for approval. Refuses the grant's giver and anyone who would gain from it."""
    if not policy.can_approve_grant(acting_user, grant):
        raise ValidationError(
            "Only a release manager other than the grant's giver, and not its grantee, "
            "may approve or decline it."
        )
    state = GrantApproval.APPROVED if approve else GrantApproval.DECLINED
    with transaction.atomic():
        n = Grant.objects.filter(
            pk=grant.pk, approval=GrantApproval.PENDING, revoked_at__isnull=True
        ).update(
            approval=state, approval_by=acting_user, approval_at=timezone.now(), approval_note=note
        )
        if not n:
            return False
        grant.refresh_from_db()
        audit.record(
            acting_user,
            "grant.approve" if approve else "grant.decline",
            grant,
            old={"approval": GrantApproval.PENDING},
            new={"approval": state, "note": note},
            finding_id=grant.finding_id,
        )
        if approve:
            _notify_given(grant)
    return True


def do_revoke_grant(grant: Grant, *, reason: str = "", acting_user: ActingUser) -> bool:
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
                f"Your access to {_scope(grant)} was revoked",
                body=reason,
                url="/access/",
                finding=grant.finding,
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
                    f"Your access to {_scope(grant)} expires {grant.expires_at:%Y-%m-%d %H:%M} UTC",
                    url="/access/",
                    finding=grant.finding,
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
                    f"Your access to {_scope(grant)} has expired",
                    url="/access/",
                    finding=grant.finding,
                )
                count += 1
    return count


def do_set_group_clearance(group: Group, tier: int, *, acting_user: ActingUser) -> GroupClearance:
    """Clear ``group`` for ``tier`` and above (the admin's one write on clearances): a change
    of who reads every project's findings, so it is audited like a grant."""
    with transaction.atomic():
        existing = GroupClearance.objects.filter(group=group).first()
        clearance, _ = GroupClearance.objects.update_or_create(group=group, defaults={"tier": tier})
        audit.record(
            acting_user,
            "clearance.set",
            clearance,
            old={"tier": Tier(existing.tier).label} if existing else None,
            new={"group": group.name, "tier": Tier(tier).label},
        )
    return clearance

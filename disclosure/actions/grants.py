"""Tiered access grants to collaborators: giving, revoking, expiry notices."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from disclosure import audit
from disclosure.models import (
    FINDING_PLACEHOLDER,
    AgreementVersion,
    Grant,
    NotificationKind,
)
from disclosure.notifications import notify
from experiments.models import Finding, Project, Tier

User = get_user_model()


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


def _scope(grant: Grant) -> str:
    """How a notice names a grant's scope: the project, or ``{finding}`` (named at read time)."""
    return str(grant.project) if grant.project is not None else FINDING_PLACEHOLDER


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
                "max_tier": Tier(max_tier).label,
                "expires_at": expires_at,
                "agreement": grant.agreement.version,
            },
            finding_id=finding.pk if finding else None,
        )
        notify(
            grantees([grant]),
            NotificationKind.GRANT_GIVEN,
            f"You were given {Tier(max_tier).label}-tier access to {_scope(grant)} "
            f"until {expires_at:%Y-%m-%d %H:%M} UTC",
            body="Accept the current collaborator agreement on your access page to use it.",
            url="/access/",
            finding=grant.finding,
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

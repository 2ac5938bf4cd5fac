"""Collaborator agreements: publishing a version, accepting it."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from disclosure import audit
from disclosure.actions.grants import grantees
from disclosure.models import (
    AgreementAcceptance,
    AgreementVersion,
    Grant,
    NotificationKind,
)
from disclosure.notifications import notify
from experiments.users import ActingUser, User


def do_publish_agreement(
    *, title: str, text: str, effective_at: datetime | None = None, acting_user: ActingUser
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
    user: User, agreement: AgreementVersion, *, ip: str | None = None, acting_user: ActingUser
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

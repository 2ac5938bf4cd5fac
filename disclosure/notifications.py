"""Notifications: an in-app inbox row per recipient, and an email through Django's mail backend
(console in development) sent only after the transaction that caused it commits."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.mail import get_connection, send_mass_mail
from django.db import transaction

from disclosure.models import FINDING_PLACEHOLDER, Notification, NotificationKind, Recusal
from experiments.signals import is_user
from experiments.users import Viewer

User = get_user_model()


def notify(
    users: Iterable[Any],
    kind: NotificationKind,
    subject: str,
    body: str = "",
    url: str = "",
    *,
    finding: Any = None,
) -> list[Notification]:
    """Notify each distinct active user once. Call inside the action's transaction.

    A notice about a finding passes it as ``finding`` and writes ``{finding}`` where its name
    goes. SECURITY: the inbox names it only to readers who may read it when they look; email
    (which leaves the lab) never names it and carries no body: a link to the page, which
    re-checks access. Reviewers who recused from the finding get no notice about it."""
    recipients = {u.pk: u for u in users if u is not None and u.is_active}
    if finding is not None:
        recused = set(Recusal.objects.filter(finding=finding).values_list("reviewer_id", flat=True))
        recipients = {pk: u for pk, u in recipients.items() if pk not in recused}
    rows = Notification.objects.bulk_create(
        Notification(user=u, kind=kind, subject=subject[:200], body=body, url=url, finding=finding)
        for u in recipients.values()
    )
    link = f"{settings.H3LAB_SITE_URL}{url}" if url else ""
    if finding is not None:
        subject = subject.replace(FINDING_PLACEHOLDER, f"finding #{finding.pk}")
        body = "Open the link to read it (the page checks your access)."
    messages = [
        (f"[h3lab] {subject}", f"{body}\n\n{link}".strip() + "\n", None, [u.email])
        for u in recipients.values()
        if u.email
    ]
    if messages:
        transaction.on_commit(
            lambda: send_mass_mail(messages, fail_silently=True, connection=get_connection())
        )
    return rows


def team_of(finding: Any) -> list[Any]:
    """Members of the finding's project team."""
    return list(finding.project.group.user_set.all())


def group_members(name: str) -> list[Any]:
    group = Group.objects.filter(name=name).first()
    return list(group.user_set.filter(is_active=True)) if group else []


def reviewers() -> list[Any]:
    return group_members(settings.H3LAB_REVIEW_BOARD_GROUP)


def release_managers() -> list[Any]:
    return group_members(settings.H3LAB_RELEASE_MANAGERS_GROUP)


def unread_count(user: Viewer) -> int:
    """Read with the user's roles (:func:`disclosure.policy.roles`, once per request)."""
    if not is_user(user):
        return 0
    from disclosure.policy import roles

    return roles(user).unread_notifications


def notify_partner_copy(export: Any) -> list[Notification]:
    """Tell a partner that a copy was made for them, with a link to its page (which re-checks
    their grants before the download). The notice names no finding."""
    from django.urls import reverse

    return notify(
        [export.recipient],
        NotificationKind.PARTNER_COPY,
        "A partner copy was prepared for you",
        body=(
            "A signed copy of findings shared with you is ready to download. It carries a mark "
            "that identifies you as its recipient; keep it within the terms you accepted."
        ),
        url=reverse("export", args=[export.pk]),
    )

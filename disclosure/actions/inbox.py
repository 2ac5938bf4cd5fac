"""A reader's own inbox."""

from __future__ import annotations

from django.utils import timezone

from disclosure.models import (
    Notification,
)
from experiments.users import ActingUser, User


def do_mark_notifications_read(user: User, *, acting_user: ActingUser) -> int:
    # Not governed state: the inbox belongs to its reader, so no audit entry.
    return Notification.objects.filter(user=user, read_at__isnull=True).update(
        read_at=timezone.now()
    )

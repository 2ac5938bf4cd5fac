"""A reader's own inbox."""

from __future__ import annotations

from django.utils import timezone

from disclosure.models import (
    Notification,
)
from disclosure.policy import forget_roles
from experiments.users import ActingUser, User


def do_mark_notifications_read(user: User, *, acting_user: ActingUser) -> int:
    # Not governed state: the inbox belongs to its reader, so no audit entry.
    marked = Notification.objects.filter(user=user, read_at__isnull=True).update(
        read_at=timezone.now()
    )
    forget_roles()  # the unread count is read with the roles, once per request
    return marked

"""A reader's own inbox."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.utils import timezone

from disclosure.models import (
    Notification,
)

User = get_user_model()


def do_mark_notifications_read(user: Any, *, acting_user: Any) -> int:
    # Not governed state: the inbox belongs to its reader, so no audit entry.
    return Notification.objects.filter(user=user, read_at__isnull=True).update(
        read_at=timezone.now()
    )

"""The types of the people the platform acts for, for annotations.

``User`` is the auth user model (settings name no ``AUTH_USER_MODEL``, so it is Django's
own). ``Viewer`` is whoever asks the policy what they may see: a user, a request's anonymous
user, or ``None`` where there is no request at all (a Celery job, a command). ``ActingUser`` is
whom an action is performed by (``acting_user``): ``request.user`` as the views have it (the
anonymous user only reaches the actions open to everyone, such as downloading public content),
or ``None`` for the system itself. Actions that need a signed-in user narrow it through the
policy's checks, which answer ``TypeGuard[User]``.
"""

from __future__ import annotations

from typing import TypeAlias

from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied

Viewer: TypeAlias = User | AnonymousUser | None
ActingUser: TypeAlias = User | AnonymousUser | None

__all__ = ["ActingUser", "User", "Viewer", "signed_in", "user_or_system"]


def signed_in(user: ActingUser) -> User:
    """``user``, where only a signed-in user can be: behind ``login_required``, or in an
    action that records them as a reviewer. SECURITY: anyone else is refused before any
    write (the guards in front make that a programming error, not a user's)."""
    if isinstance(user, User) and user.is_authenticated:
        return user
    raise PermissionDenied("This needs a signed-in user.")


def user_or_system(user: ActingUser) -> User | None:
    """``user`` as a row may name its author: a signed-in user, or ``None`` for the system.
    SECURITY: the anonymous user never authors a row; it is refused before any write."""
    if user is None:
        return None
    return signed_in(user)

"""Signals the experiments app sends so that apps built on it (disclosure's audit log,
notifications) can observe governed changes without experiments importing them, and the
"current actor": who is making the changes of this request, task or action, for changes that
arrive as plain ORM signals (group membership) rather than through an action."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

from django.dispatch import Signal

if TYPE_CHECKING:
    from experiments.users import ActingUser, User

# Sent by every action that changes governed state, inside its transaction.
# kwargs: actor (User | None), action (str, e.g. "run.submit"), obj (Model),
#         old (dict | None), new (dict | None)
governed_change = Signal()


@dataclass(frozen=True)
class Actor:
    """Who is acting (a user, or None when unknown) and by which route: ``action``, ``web``,
    ``admin``, ``api``, or ``orm`` when nothing set it (a shell, a migration, a script)."""

    user: ActingUser
    via: str


_current: ContextVar[Actor | None] = ContextVar("h3lab_current_actor", default=None)


def current_actor() -> Actor:
    return _current.get() or Actor(user=None, via="orm")


@contextmanager
def acting_as(user: ActingUser, via: str) -> Iterator[Actor]:
    """Attribute the changes made inside the block to ``user`` (set by the request middleware
    and by actions that change rows observed through ORM signals)."""
    actor = Actor(user=user, via=via)
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)


def announce(actor: ActingUser, action: str, obj: Any, old: Any = None, new: Any = None) -> None:
    """Send :data:`governed_change` for one change (call inside the action's transaction)."""
    governed_change.send(sender=type(obj), actor=actor, action=action, obj=obj, old=old, new=new)


def is_user(user: object) -> TypeGuard[User]:
    """A signed-in user (not None, not anonymous): who a row may name as its author."""
    return user is not None and bool(getattr(user, "is_authenticated", False))

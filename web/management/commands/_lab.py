"""What the lab administration commands share: who acts, and errors as CommandError."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError, CommandParser

from experiments.actions.projects import find_user
from experiments.models import Project
from experiments.users import User

T = TypeVar("T")


def add_actor_argument(parser: CommandParser) -> None:
    parser.add_argument(
        "--actor",
        metavar="USERNAME",
        help="the lab admin making the change, recorded in the audit log (default: none, "
        "recorded as made from the server's shell)",
    )


def actor(username: str | None) -> User | None:
    if not username:
        return None
    with errors_as_command_errors():
        user = find_user(username, field="actor")
    if not user.is_superuser:
        raise CommandError(f"--actor {username}: only a lab admin (superuser) administers the lab")
    return user


def project(slug: str) -> Project:
    found = Project.objects.filter(slug=slug).first()
    if found is None:
        raise CommandError(f"no project is called {slug!r}")
    return found


@contextmanager
def errors_as_command_errors() -> Iterator[None]:
    try:
        yield
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            text = "; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())
        else:
            text = " ".join(exc.messages)
        raise CommandError(text) from None


def checked(call: Callable[[], T]) -> T:
    with errors_as_command_errors():
        return call()

"""``manage.py delegate_releases SLUG USER [--revoke]``: let one person manage one project's
releases, grants and objections (and its team)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from disclosure.actions.delegation import (
    check_delegate_release_management,
    check_revoke_release_delegation,
)
from web.management.commands._lab import actor, add_actor_argument, checked, project


class Command(BaseCommand):
    help = (
        "Delegate (or with --revoke, take back) a project's release management to a user. "
        "Delegates must sign in with a second factor. Audited."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("username")
        parser.add_argument("--revoke", action="store_true")
        add_actor_argument(parser)

    def handle(self, *args: Any, **o: Any) -> None:
        p = project(o["slug"])
        by = actor(o["actor"])
        if o["revoke"]:
            user = checked(
                lambda: check_revoke_release_delegation(p, o["username"], acting_user=by)
            )
            self.stdout.write(f"{user.username} no longer manages {p.slug}'s releases")
        else:
            user = checked(
                lambda: check_delegate_release_management(p, o["username"], acting_user=by)
            )
            self.stdout.write(f"{user.username} now manages {p.slug}'s releases")

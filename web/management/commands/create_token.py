"""``manage.py create_token USER NAME [--scope S] [--days N]``: an API token for automation
(a CI job, the terminal client on a server), printed once."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from api.actions import check_create_token
from api.models import TokenScope
from experiments.actions.projects import find_user
from web.management.commands._lab import actor, add_actor_argument, checked


class Command(BaseCommand):
    help = (
        "Create an API token acting as USER, limited to a scope, and print it once (only its "
        "hash is stored). Audited; USER can see and revoke it on the API tokens page."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username", help="the account the token acts as")
        parser.add_argument("name", help="where the token is used, e.g. 'nightly CI'")
        parser.add_argument("--scope", choices=TokenScope.values, default=TokenScope.READ)
        parser.add_argument(
            "--days",
            type=int,
            default=30,
            help=f"lifetime, 1-{settings.H3LAB_API_TOKEN_MAX_DAYS} days (default 30)",
        )
        parser.add_argument("--quiet", action="store_true", help="print only the token")
        add_actor_argument(parser)

    def handle(self, *args: Any, **o: Any) -> None:
        by = actor(o["actor"])
        user = checked(lambda: find_user(o["username"]))
        new = checked(
            lambda: check_create_token(
                user=user, name=o["name"], scope=o["scope"], days=o["days"], acting_user=by
            )
        )
        if o["quiet"]:
            self.stdout.write(new.plaintext)
            return
        self.stdout.write(
            f"token {new.token.name!r} for {user.username}, scope {new.token.scope}, "
            f"expires {new.token.expires_at:%Y-%m-%d %H:%M} UTC. Copy it now; it is not shown "
            f"again:\n{new.plaintext}"
        )

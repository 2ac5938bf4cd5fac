"""``manage.py project_team SLUG [list | add USER … | remove USER …]``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from disclosure import policy
from experiments.actions.projects import check_add_project_member, check_remove_project_member
from web.management.commands._lab import (
    actor,
    add_actor_argument,
    errors_as_command_errors,
    project,
)


class Command(BaseCommand):
    help = "List, add or remove a project's team members (audited)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("op", choices=["list", "add", "remove"], nargs="?", default="list")
        parser.add_argument("usernames", nargs="*", metavar="USERNAME")
        add_actor_argument(parser)

    def handle(self, *args: Any, **o: Any) -> None:
        p = project(o["slug"])
        by = actor(o["actor"])
        check = {"add": check_add_project_member, "remove": check_remove_project_member}.get(
            o["op"]
        )
        if check is not None:
            with transaction.atomic(), errors_as_command_errors():
                for username in o["usernames"]:
                    check(p, username, acting_user=by)
            verb = "added to" if o["op"] == "add" else "removed from"
            self.stdout.write(f"{', '.join(o['usernames'])} {verb} {p.slug}")
        members = [u.username for u in p.group.user_set.order_by("username")]
        delegates = [u.username for u in policy.project_delegates(p)]
        self.stdout.write(f"team of {p.slug}: {', '.join(members) or 'nobody'}")
        self.stdout.write(f"release delegates: {', '.join(delegates) or 'none'}")

"""``manage.py create_project SLUG NAME [--member USER …]``: a project and its first team."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from experiments.actions.projects import check_add_project_member, check_create_project
from web.management.commands._lab import (
    actor,
    add_actor_argument,
    checked,
    errors_as_command_errors,
)


class Command(BaseCommand):
    help = (
        "Create a project (its team sees its runs and private findings) and add its first "
        "members. Audited, like the same change on the Lab page or through the API."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug", help="lowercase letters, digits and hyphens (used in URLs)")
        parser.add_argument("name", help="the project's display name")
        parser.add_argument("--description", default="")
        parser.add_argument(
            "--member", action="append", default=[], metavar="USERNAME", help="repeatable"
        )
        add_actor_argument(parser)

    def handle(self, *args: Any, **o: Any) -> None:
        by = actor(o["actor"])
        with transaction.atomic():
            project = checked(
                lambda: check_create_project(
                    slug=o["slug"], name=o["name"], description=o["description"], acting_user=by
                )
            )
            with errors_as_command_errors():
                for username in o["member"]:
                    check_add_project_member(project, username, acting_user=by)
        members = ", ".join(o["member"]) or "nobody yet"
        self.stdout.write(f"created project {project.slug} ({project.name}); team: {members}")

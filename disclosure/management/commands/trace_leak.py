"""``manage.py trace_leak FILE_OR_TEXT``: name the recipient of a leaked partner copy."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from disclosure import audit, leaks


class Command(BaseCommand):
    help = (
        "Attribute a leaked file (a bundle, one of its files, a PNG) or a text excerpt ('-' "
        "reads stdin) to the partner copy it came from, using the recorded recipient marks. "
        "Names the recipient and export, or says it cannot (exit status 1)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file_or_text")

    def handle(self, *args: Any, **opts: Any) -> None:
        arg = opts["file_or_text"]
        result = leaks.trace_text(sys.stdin.read()) if arg == "-" else leaks.trace_leak(arg)
        audit.record(
            None,
            "leak.trace",
            result.mark.export if result.mark else None,
            new={
                "recipient": result.mark.recipient.get_username() if result.mark else None,
                "method": result.method,
                "detail": result.detail,
            },
        )
        if result.mark is None:
            raise CommandError(result.summary())
        self.stdout.write(result.summary())

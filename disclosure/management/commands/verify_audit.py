"""``manage.py verify_audit``: recompute the audit hash chain; exit 1 naming the first break."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from disclosure import audit


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; exits non-zero naming the first broken entry."

    def handle(self, *args: Any, **options: Any) -> None:
        checked, broken = audit.verify()
        if broken is not None:
            raise CommandError(
                f"audit chain broken at {broken} ({checked} entries verified before it)"
            )
        self.stdout.write(self.style.SUCCESS(f"audit chain intact: {checked} entries"))

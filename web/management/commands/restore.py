"""``manage.py restore ARCHIVE``: restore a ``manage.py backup`` archive into an empty database
and data folder, refuse keys that do not match its fingerprints, then verify the audit chain,
every artifact and every bundle, and re-send queued runs and exports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.backup import BackupError, restore_backup


class Command(BaseCommand):
    help = (
        "Restore a backup archive on a fresh machine (empty database, empty H3LAB_DATA_DIR), "
        "with the deployment's master keys configured. Verifies the audit chain, decrypts "
        "every artifact, verifies every export bundle and re-sends queued runs; exits 1 if "
        "anything fails verification."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("archive")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            report = restore_backup(Path(opts["archive"]), say=self.stdout.write)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        counts = ", ".join(f"{n} {what}" for what, n in report.counts.items())
        self.stdout.write(f"restored: {counts}")
        self.stdout.write(f"audit: {report.audit}")
        self.stdout.write(f"artifacts decrypted and verified: {report.artifacts_ok}")
        self.stdout.write(f"export bundles verified: {report.bundles_ok}")
        self.stdout.write(
            f"re-sent {len(report.resent_runs)} queued runs {report.resent_runs} and "
            f"{len(report.resent_exports)} queued exports; {report.running_runs} runs were "
            "running and are requeued by the reaper once their heartbeat times out"
        )
        if report.problems:
            for problem in report.problems:
                self.stderr.write(f"PROBLEM: {problem}")
            raise CommandError(f"restore finished with {len(report.problems)} problems")
        self.stdout.write(self.style.SUCCESS("restore complete: everything verified"))

"""``manage.py backup OUT``: one consistent archive of the database, artifacts, export bundles
and unfinished runs' checkpoints, with a manifest of digests and master-key fingerprints.
The master keys are not in it: back them up separately (docs/operations.md, Backup)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from web.backup import BackupError, create_backup


class Command(BaseCommand):
    help = (
        "Write one consistent backup archive (database snapshot, artifacts, export bundles, "
        "checkpoints of queued and running runs, manifest with SHA-256 digests and master-key "
        "fingerprints) to OUT (.tar, or .tar.gz). Master keys are NOT included."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("out", help="the archive to write (must not exist)")

    def handle(self, *args: Any, **opts: Any) -> None:
        out = Path(opts["out"])
        try:
            manifest = create_backup(out, say=self.stdout.write)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        size = out.stat().st_size
        counts = ", ".join(f"{n} {what}" for what, n in manifest["counts"].items())
        self.stdout.write(f"wrote {out} ({size} bytes, {len(manifest['files'])} files): {counts}")
        keys = ", ".join(
            f"{k['key_id']} (fingerprint {k['fingerprint']})"
            for k in manifest["keys"]
            if not k["retired"]
        )
        self.stdout.write(
            self.style.WARNING(
                f"The master keys are NOT in this archive. Back up {keys} separately (the "
                "H3LAB_MASTER_KEYS value or key file, kept apart from this archive): without "
                "them every encrypted artifact in it is unreadable, and restore refuses to run."
            )
        )

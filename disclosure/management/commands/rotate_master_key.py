"""``manage.py rotate_master_key``: re-wrap every data key under the current master key."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from disclosure.actions.keys import do_rewrap_keys
from experiments.storage import ArtifactUnavailable
from vault import keystore, registry
from vault.crypto import DecryptionError, KeyError_


class Command(BaseCommand):
    help = (
        "Re-wrap every artifact data key, partner-copy key and signing key under the current "
        "master key (the first of H3LAB_MASTER_KEYS) without re-encrypting any data. Keep the "
        "old key configured (after the new one) until this has run; then `keys retire` it. "
        "--generate prints a fresh key to put first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--generate", action="store_true", help="print a new id:base64 key and exit"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["generate"]:
            self.stdout.write(keystore.generate_key_line())
            return
        try:
            # Only under a registered current key that every process holds (`keys register`).
            registry.verify()
            counts = do_rewrap_keys(acting_user=None)
        except (KeyError_, registry.KeyMismatch, DecryptionError, ArtifactUnavailable) as exc:
            raise CommandError(str(exc)) from None
        current = keystore.current().key_id
        summary = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in counts.items())
        self.stdout.write(f"re-wrapped under master key {current}: {summary}")

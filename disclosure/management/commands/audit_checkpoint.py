"""``manage.py audit_checkpoint``: sign the audit log's head now and write the checkpoint under
``H3LAB_AUDIT_CHECKPOINT_DIR`` (the scheduler also does so every
``H3LAB_AUDIT_CHECKPOINT_INTERVAL_S``). Refuses, exiting 1, when the log does not verify.

``--public-key`` prints the checkpoint public key (PEM) to publish or pin on a verifier;
``--prove N`` prints an RFC 6962 inclusion proof of entry N and a consistency proof from the
previous checkpoint, as JSON, for a verifier that keeps only checkpoints."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from disclosure import audit
from vault import checkpoint


class Command(BaseCommand):
    help = "Sign and write a checkpoint of the audit log's head (exits 1 if the log is broken)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--public-key", action="store_true", help="print the public key")
        parser.add_argument("--prove", type=int, metavar="N", help="print proofs for entry N")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["public_key"]:
            self.stdout.write(checkpoint.public_key_pem(audit.public_key()).decode(), ending="")
            return
        try:
            cp, path = audit.write_checkpoint()
        except audit.AuditBroken as exc:
            raise CommandError(f"no checkpoint signed: {exc}") from None
        if options["prove"] is not None:
            try:
                proofs = audit.proofs(options["prove"], cp)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(json.dumps(proofs, indent=1))
            return
        where = f"written to {path}" if path else "already stored (the log has not grown)"
        self.stdout.write(
            self.style.SUCCESS(
                f"checkpoint of {cp.tree_size} entries, root {cp.root_hash}, signed by "
                f"{cp.key_id}: {where}"
            )
        )

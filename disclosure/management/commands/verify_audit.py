"""``manage.py verify_audit``: recompute the audit hash chain and compare it with signed
checkpoints; exit 1 naming the first break.

Checkpoints come from the checkpoint folder (``H3LAB_AUDIT_CHECKPOINT_DIR``) and from
``--checkpoint FILE`` (a checkpoint file, an audit CSV export, or an export bundle, which embed
one). A checkpoint proves history up to it even when its file was deleted from the folder:
keep copies elsewhere (see docs/operations.md, "Audit log integrity")."""

from __future__ import annotations

import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from disclosure import audit
from vault import checkpoint
from vault.checkpoint import Checkpoint


def _text(path: Path) -> str:
    """A checkpoint file or audit CSV as text; for a bundle, its embedded checkpoint."""
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.endswith("/audit-checkpoint.json"):
                    f = tar.extractfile(member)
                    if f is not None:
                        return f.read().decode()
        raise checkpoint.CheckpointError("the bundle embeds no audit checkpoint")
    return path.read_text()


class Command(BaseCommand):
    help = (
        "Verify the audit log's hash chain and its signed checkpoints; exits non-zero naming "
        "the first broken entry."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--checkpoint",
            action="append",
            default=[],
            metavar="FILE",
            help="a checkpoint file, audit CSV export or export bundle to verify against",
        )
        parser.add_argument(
            "--public-key",
            action="append",
            default=[],
            metavar="PEM",
            help="also trust checkpoints signed by this public key (e.g. before a rotation)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            pems = [Path(p).read_bytes() for p in options["public_key"]]
            extra = [checkpoint.load_public_key_pem(pem) for pem in pems]
            trusted = audit.trusted_keys(extra)
            stored, problems = audit.stored_checkpoints(trusted)
            if problems:
                label, problem = problems[0]
                raise CommandError(f"checkpoint {label}: {problem}")
            given: list[tuple[str, Checkpoint]] = []
            for name in options["checkpoint"]:
                try:
                    given.append((name, audit.read_checkpoint(_text(Path(name)), name, trusted)))
                except checkpoint.CheckpointError as exc:
                    raise CommandError(f"checkpoint {name}: {exc}") from None
        except (OSError, checkpoint.CheckpointError) as exc:
            raise CommandError(str(exc)) from None
        checkpoints = [*stored, *given]
        checked, broken = audit.verify(checkpoints)
        if broken is not None:
            raise CommandError(
                f"audit chain broken at {broken} ({checked} entries verified before it)"
            )
        message = f"audit chain intact: {checked} entries"
        if checkpoints:
            newest = max(checkpoints, key=lambda item: item[1].tree_size)
            message += (
                f"; matches {len(checkpoints)} signed checkpoint(s), the newest covering "
                f"{newest[1].tree_size} entries (signed {newest[1].created} by {newest[1].key_id})"
            )
        else:
            message += "; no signed checkpoint to compare with (run manage.py audit_checkpoint)"
        self.stdout.write(self.style.SUCCESS(message))
        if checkpoints:
            self._warn_if_stale(newest[1], checked)

    def _warn_if_stale(self, newest: Checkpoint, checked: int) -> None:
        """Entries after the newest checkpoint are not protected yet; a newest checkpoint much
        older than the interval means the scheduler is not signing, or newer files are gone."""
        created = datetime.strptime(newest.created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        age = (timezone.now() - created).total_seconds()
        interval = settings.H3LAB_AUDIT_CHECKPOINT_INTERVAL_S
        if checked > newest.tree_size:
            self.stdout.write(
                f"{checked - newest.tree_size} entries after the newest checkpoint are not "
                "covered by one yet"
            )
        if age > 2 * interval:
            self.stdout.write(
                self.style.WARNING(
                    f"warning: the newest checkpoint is {age / 3600:.1f} h old (one is due every "
                    f"{interval:.0f} s): is the scheduler running, or were newer checkpoint "
                    "files deleted? Compare with copies kept elsewhere."
                )
            )

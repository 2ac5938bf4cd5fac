"""``manage.py keys status|register|retire KEY_ID``: the master keys this deployment records.

- ``status``: every recorded key (id, fingerprint, current, retired) beside the keys this
  process holds, and what is still wrapped under each; exit 1 if this process's keys do not fit.
- ``register``: record the keys this process holds and make its first key current (a rotation:
  the new key first, the old one second; the old current key must be held, so a wrong key
  cannot register itself). Audited.
- ``retire KEY_ID``: after ``rotate_master_key`` re-wrapped everything, mark the old key retired
  so it can leave H3LAB_MASTER_KEYS. Refused while anything is still wrapped under it. Audited.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from disclosure import audit
from disclosure.models import Export, SigningKey
from experiments.models import Artifact
from vault import keystore, registry
from vault.crypto import KeyError_
from vault.fingerprints import fingerprint
from web.startup import probe


def wrapped_under(key_id: str) -> dict[str, int]:
    """What still needs ``key_id`` to be read."""
    return {
        "artifacts": Artifact.objects.filter(
            encrypted=True, key_id=key_id, wrapped_key__isnull=False
        ).count(),
        "partner copies": Export.objects.filter(encrypted=True, master_key_id=key_id).count(),
        "signing keys": SigningKey.objects.filter(master_key_id=key_id).count(),
    }


class Command(BaseCommand):
    help = (
        "Master-key fingerprints: `status` compares the keys this process holds with the "
        "database's records; `register` records them and makes the first current (rotation); "
        "`retire KEY_ID` marks a key nothing is wrapped under any more."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        sub.add_parser("status", help="recorded keys vs the keys this process holds")
        sub.add_parser("register", help="record held keys; make the first one current")
        retire = sub.add_parser("retire", help="mark a re-wrapped old key retired")
        retire.add_argument("key_id")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            {"status": self.status, "register": self.register, "retire": self.retire}[
                opts["action"]
            ](**opts)
        except (KeyError_, registry.KeyMismatch, registry.NotMigrated) as exc:
            raise CommandError(str(exc)) from None

    def status(self, **opts: Any) -> None:
        ring = keystore.keyring()
        held = {k.key_id: fingerprint(k) for k in ring.keys}
        records = registry.records()
        if not records:
            self.stdout.write("no master key registered yet (`manage.py keys register`)")
        for r in records:
            flags = ", ".join(f for f, on in (("current", r.current), ("retired", r.retired)) if on)
            mine = held.get(r.key_id)
            have = "not held" if mine is None else ("held" if mine == r.fingerprint else "WRONG")
            uses = ", ".join(f"{n} {what}" for what, n in wrapped_under(r.key_id).items() if n)
            self.stdout.write(
                f"{r.key_id}  {r.fingerprint}  {flags or '-'}  {have}  {uses or 'nothing wrapped'}"
            )
        for key_id, fp in held.items():
            if key_id not in {r.key_id for r in records}:
                self.stdout.write(f"{key_id}  {fp}  held, not registered")
        problems = registry.problems(ring)
        if problems:
            raise CommandError("; ".join(problems))
        self.stdout.write(self.style.SUCCESS("this process's master keys fit this deployment"))

    def register(self, **opts: Any) -> None:
        reg = registry.register(keystore.keyring(), probe=probe)
        if reg.changed:
            audit.record(
                None,
                "masterkey.register",
                None,
                new={
                    "keys": {r.key_id: r.fingerprint for r in reg.added},
                    "current": reg.current,
                    "previous_current": reg.previous_current,
                },
            )
        added = ", ".join(f"{r.key_id} ({r.fingerprint})" for r in reg.added) or "none"
        self.stdout.write(f"registered: {added}; current master key: {reg.current}")
        if reg.previous_current and reg.previous_current != reg.current:
            self.stdout.write(
                f"now run `manage.py rotate_master_key`, restart every process with "
                f"{reg.current} first, then `manage.py keys retire {reg.previous_current}`"
            )

    def retire(self, *, key_id: str, **opts: Any) -> None:
        left = {what: n for what, n in wrapped_under(key_id).items() if n}
        if left:
            raise CommandError(
                f"master key {key_id!r} still wraps "
                + ", ".join(f"{n} {what}" for what, n in left.items())
                + "; run `manage.py rotate_master_key` first"
            )
        record = registry.retire(key_id)
        audit.record(None, "masterkey.retire", None, new={"key_id": key_id})
        self.stdout.write(
            f"retired master key {record.key_id} ({record.fingerprint}); remove it from "
            "H3LAB_MASTER_KEYS (and its backup copy once no backup needs it)"
        )

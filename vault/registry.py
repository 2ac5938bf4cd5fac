"""The database's record of which master keys this deployment uses, and the check every process
makes against it at start (web, worker, beat, ``check --deploy``, restore).

The pure comparison is :func:`vault.fingerprints.keyring_problems`; this module reads and writes
:class:`vault.models.MasterKeyRecord`. It names no app above it: callers that must look at
encrypted data (whether a key really opens what exists) pass a ``probe``, and callers audit what
:func:`register` and :func:`retire` changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import DatabaseError, IntegrityError, transaction
from django.utils import timezone

from vault import keystore
from vault.crypto import Keyring, MasterKey
from vault.fingerprints import KeyRecord, fingerprint, keyring_problems, mismatches
from vault.models import MasterKeyRecord

# Tries a key on data that exists under its id; returns why it does not open it, or None.
Probe = Callable[[MasterKey], "str | None"]


class KeyMismatch(Exception):
    """The keys a process holds are not the ones this deployment's data was encrypted with."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class NotMigrated(Exception):
    """The key table does not exist yet (``migrate`` has not run): nothing to compare."""


@dataclass
class Registration:
    added: list[KeyRecord] = field(default_factory=list)
    current: str = ""
    previous_current: str = ""

    @property
    def changed(self) -> bool:
        return bool(self.added) or self.current != self.previous_current


def records() -> list[KeyRecord]:
    """Every recorded key. Raises :class:`NotMigrated` before ``migrate`` created the table
    (and lets other database errors through: a process must not start unchecked)."""
    try:
        with transaction.atomic():  # a savepoint: a missing table must not poison the caller's
            rows = list(MasterKeyRecord.objects.all())
    except DatabaseError as exc:
        if _missing_table(exc):
            raise NotMigrated(str(exc)) from None
        raise
    return [
        KeyRecord(r.key_id, r.fingerprint, current=r.current, retired=r.retired_at is not None)
        for r in rows
    ]


def _missing_table(exc: DatabaseError) -> bool:
    text = str(exc).lower()
    return MasterKeyRecord._meta.db_table in text and (
        "no such table" in text or "does not exist" in text
    )


def has_records() -> bool:
    """Whether any key is recorded (False before ``migrate``). For the development key file:
    never generate a fresh key over a database that holds data under another."""
    try:
        return bool(records())
    except (NotMigrated, DatabaseError, RuntimeError):
        # Cannot tell (the database is unreachable, or a test blocks database access): only
        # DEBUG generates keys, and a registered key would still be compared at every start.
        return False


def problems(keyring: Keyring | None = None) -> list[str]:
    """Why this process's keys (or ``keyring``) do not fit this deployment (empty: they do)."""
    return keyring_problems(keyring or keystore.keyring(), records())


def verify(keyring: Keyring | None = None) -> None:
    """Raise :class:`KeyMismatch` naming every problem with the process's keys."""
    found = problems(keyring)
    if found:
        raise KeyMismatch(found)


def register(keyring: Keyring | None = None, *, probe: Probe | None = None) -> Registration:
    """Record every key the process holds that the database does not know and make the
    process's current key the deployment's current key.

    Refused (:class:`KeyMismatch`) when a held key contradicts its record, when the database
    has a current key this process does not hold with the right fingerprint (so a wrong key
    cannot bless itself: a rotation registers the new key from a process holding both), when
    the key to make current is retired, or when ``probe`` says a new key does not open data
    already stored under its id. Idempotent."""
    ring = keyring or keystore.keyring()
    mine = ring.current
    with transaction.atomic():
        rows = {r.key_id: r for r in MasterKeyRecord.objects.select_for_update()}
        found = mismatches(ring, [_record(r) for r in rows.values()])
        if mine.key_id in rows and rows[mine.key_id].retired_at is not None:
            found.append(f"master key {mine.key_id!r} was retired; it cannot become current")
        new = [k for k in ring.keys if k.key_id not in rows]
        if probe is not None:
            found += [p for p in map(probe, new) if p]
        if found:
            raise KeyMismatch(found)
        previous = next((r.key_id for r in rows.values() if r.current), "")
        reg = Registration(current=mine.key_id, previous_current=previous)
        now = timezone.now()
        MasterKeyRecord.objects.filter(current=True).exclude(key_id=mine.key_id).update(
            current=False
        )
        for key in new:
            row = MasterKeyRecord.objects.create(
                key_id=key.key_id,
                fingerprint=fingerprint(key),
                current=key.key_id == mine.key_id,
                registered_at=now,
            )
            reg.added.append(_record(row))
        MasterKeyRecord.objects.filter(key_id=mine.key_id).update(current=True)
    return reg


def register_first(keyring: Keyring | None = None, *, probe: Probe | None = None) -> Registration:
    """At a process's start: if the database records no key yet (a new deployment, or the
    first start since fingerprints exist), record this process's keys; otherwise change
    nothing. A concurrent first start by another process is not an error."""
    ring = keyring or keystore.keyring()
    if records():
        return Registration()
    try:
        return register(ring, probe=probe)
    except IntegrityError:  # another process registered at the same moment: compare with it
        return Registration()


def retire(key_id: str) -> KeyRecord:
    """Mark a key retired: nothing may be wrapped under it any more (the caller checks), and it
    may leave the configuration. The current key cannot be retired."""
    with transaction.atomic():
        row = MasterKeyRecord.objects.select_for_update().filter(key_id=key_id).first()
        if row is None:
            raise KeyMismatch([f"master key {key_id!r} is not registered"])
        if row.current:
            raise KeyMismatch([f"master key {key_id!r} is current; register its successor first"])
        if row.retired_at is None:
            row.retired_at = timezone.now()
            row.save(update_fields=["retired_at"])
    return _record(row)


def _record(row: MasterKeyRecord) -> KeyRecord:
    return KeyRecord(
        row.key_id, row.fingerprint, current=row.current, retired=row.retired_at is not None
    )

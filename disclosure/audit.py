"""The append-only, hash-chained audit log.

Each entry's ``hash`` is SHA-256 over the previous entry's hash and a canonical JSON form of
the entry (its id, time, actor, action, object, old/new values and IP). Entries are appended
one at a time under a lock on :class:`~disclosure.models.AuditHead`, which also records the
chain's end so that truncating the newest entries is detected. :func:`verify` (and
``manage.py verify_audit``) recomputes the chain and names the first broken entry. On
PostgreSQL a trigger refuses UPDATE and DELETE on the table (migration 0002).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone

from disclosure.models import AuditEntry, AuditHead
from experiments.models import Finding
from experiments.signals import is_user

if TYPE_CHECKING:
    from experiments.users import ActingUser

GENESIS = "0" * 64


def _plain(value: Any) -> Any:
    """JSON-native form of ``value`` (what the database gives back), so hashes round-trip."""
    if value is None:
        return None
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical(entry: AuditEntry) -> bytes:
    fields = {
        "id": entry.pk,
        "created_at": _iso(entry.created_at),
        "actor_id": entry.actor_id,
        "actor_name": entry.actor_name,
        "action": entry.action,
        "object_type": entry.object_type,
        "object_id": entry.object_id,
        "object_repr": entry.object_repr,
        "finding_id": entry.finding_id,
        "old": entry.old,
        "new": entry.new,
        "ip": entry.ip,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(entry)).hexdigest()


def client_ip(request: HttpRequest | None) -> str | None:
    # SECURITY: REMOTE_ADDR only. Behind a proxy, the proxy should set it (X-Forwarded-For is
    # client-controlled and would let a reader forge the address in the log).
    return request.META.get("REMOTE_ADDR") if request is not None else None


def _finding_id(obj: Any) -> int | None:
    if isinstance(obj, Finding):
        return obj.pk
    fid = getattr(obj, "finding_id", None)
    return fid if isinstance(fid, int) else None


def record(
    actor: ActingUser,
    action: str,
    obj: Any = None,
    *,
    old: Any = None,
    new: Any = None,
    ip: str | None = None,
    finding_id: int | None = None,
) -> AuditEntry:
    """Append one entry. Runs in (or opens) a transaction: if the caller's transaction rolls
    back, so does its entry, and the log only ever states what happened."""
    user = actor if is_user(actor) else None
    with transaction.atomic():
        head, _ = AuditHead.objects.select_for_update().get_or_create(pk=1)
        entry = AuditEntry(
            id=head.last_id + 1,
            created_at=timezone.now(),
            actor=user,
            actor_name=user.get_username() if user else "",
            action=action,
            object_type=obj._meta.label_lower if isinstance(obj, models.Model) else "",
            object_id=str(obj.pk) if isinstance(obj, models.Model) else "",
            object_repr=str(obj)[:300] if obj is not None else "",
            finding_id=finding_id if finding_id is not None else _finding_id(obj),
            old=_plain(old),
            new=_plain(new),
            ip=ip,
            prev_hash=head.last_hash,
        )
        entry.hash = entry_hash(head.last_hash, entry)
        entry.save(force_insert=True)
        AuditHead.objects.filter(pk=1).update(last_id=entry.pk, last_hash=entry.hash)
    return entry


@dataclass(frozen=True)
class Break:
    entry_id: int | None
    reason: str

    def __str__(self) -> str:
        where = f"entry #{self.entry_id}" if self.entry_id is not None else "end of chain"
        return f"{where}: {self.reason}"


def _entries() -> Iterator[AuditEntry]:
    return AuditEntry.objects.order_by("id").iterator(chunk_size=2000)


def verify() -> tuple[int, Break | None]:
    """Recompute the chain. Returns (entries checked, first break or None)."""
    prev_hash, expected_id, n = GENESIS, 1, 0
    for entry in _entries():
        if entry.pk != expected_id:
            return n, Break(expected_id, f"missing (next entry present is #{entry.pk})")
        if entry.prev_hash != prev_hash:
            return n, Break(entry.pk, "does not chain to the previous entry (reordered?)")
        if entry_hash(prev_hash, entry) != entry.hash:
            return n, Break(entry.pk, "content does not match its hash (edited)")
        prev_hash, expected_id, n = entry.hash, expected_id + 1, n + 1
    head = AuditHead.objects.filter(pk=1).first()
    last_id, last_hash = (head.last_id, head.last_hash) if head else (0, GENESIS)
    if (last_id, last_hash) != (expected_id - 1, prev_hash):
        return n, Break(expected_id, f"chain ends before the recorded head #{last_id} (deleted)")
    return n, None

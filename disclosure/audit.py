"""The append-only, hash-chained audit log.

Each entry's ``hash`` is SHA-256 over the previous entry's hash and a canonical JSON form of
the entry (its id, time, actor, action, object, old/new values and IP). Entries are appended
one at a time under a lock on :class:`~disclosure.models.AuditHead`, which also records the
chain's end so that truncating the newest entries is detected. :func:`verify` (and
``manage.py verify_audit``) recomputes the chain and names the first broken entry itself. On
PostgreSQL triggers refuse UPDATE, DELETE and TRUNCATE on the table and let the head only
advance (migrations 0002 and 0007).

Whoever controls the database can still recompute the whole chain. Against that, signed
checkpoints: an Ed25519 key kept outside the database (``H3LAB_AUDIT_KEY`` or its key file)
signs the RFC 6962 Merkle tree head of the log (:mod:`vault.merkle`, :mod:`vault.checkpoint`)
periodically, on demand, and in every export bundle and audit CSV; a checkpoint taken before
a rewrite contradicts it. docs/operations.md ("Audit log integrity") lists what remains possible.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone

from disclosure.models import AuditEntry, AuditHead
from experiments.models import Finding
from experiments.signals import is_user
from vault import checkpoint, merkle
from vault.checkpoint import Checkpoint

if TYPE_CHECKING:
    from experiments.users import ActingUser

GENESIS = "0" * 64
log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    """JSON-native form of ``value`` (what the database gives back), so hashes round-trip."""
    if value is None:
        return None
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# What an entry's hash covers (with the previous entry's hash), in this order of columns.
_FIELDS = (
    "id",
    "created_at",
    "actor_id",
    "actor_name",
    "action",
    "object_type",
    "object_id",
    "object_repr",
    "finding_id",
    "old",
    "new",
    "ip",
)


def _canonical_values(fields: dict[str, Any]) -> bytes:
    fields["created_at"] = _iso(fields["created_at"])
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical(entry: AuditEntry) -> bytes:
    return _canonical_values({f: getattr(entry, f) for f in _FIELDS})


def _chain_hash(prev_hash: str, content: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + b"\n" + content).hexdigest()


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    return _chain_hash(prev_hash, canonical(entry))


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


def leaf(entry: AuditEntry) -> bytes:
    """The entry's RFC 6962 leaf hash in the checkpointed Merkle tree: SHA-256(0x00 || its
    canonical form). Covers the entry's own content only, not its place in the chain."""
    return merkle.leaf_hash(canonical(entry))


@dataclass(frozen=True)
class Break:
    entry_id: int | None
    reason: str

    def __str__(self) -> str:
        where = f"entry #{self.entry_id}: " if self.entry_id is not None else ""
        return f"{where}{self.reason}"


@dataclass
class _Scan:
    """One pass over the log: how many entries chain, the first break, and the Merkle tree
    head and chain hash after each size a checkpoint asks about."""

    checked: int = 0
    broken: Break | None = None
    head_hash: str = GENESIS
    roots: dict[int, str] = field(default_factory=dict)
    chain: dict[int, str] = field(default_factory=dict)
    edge: list[str] = field(default_factory=list)
    edges: dict[int, list[str]] = field(default_factory=dict)


def _scan(sizes: set[int], since: Checkpoint | None = None) -> _Scan:
    """Recompute the chain up to the recorded head, naming the entry that was changed.

    A changed entry is named itself, not the one after it: an entry whose content no longer
    matches its hash is "edited"; an entry that is consistent in itself but whose successor
    (also consistent in itself) chained to a different hash was "rewritten" (content and hash
    replaced together, which only a successor's link or a checkpoint can show).

    ``since``: start after this checkpoint (its signed chain hash and Merkle edge) and read only
    the entries it does not cover."""
    # The head first, then only the entries it covers: an append committed between the two
    # reads (ids are given out under the head's lock) is not mistaken for a broken end.
    head = AuditHead.objects.filter(pk=1).first()
    last_id, last_hash = (head.last_id, head.last_hash) if head else (0, GENESIS)
    scan = _Scan()
    if since is None:
        acc, prev_id = merkle.Accumulator(), 0
    else:
        acc = merkle.Accumulator.from_edge(since.tree_size, [bytes.fromhex(h) for h in since.edge])
        prev_id, scan.head_hash, scan.checked = since.tree_size, since.head_hash, since.tree_size
    rows = (
        AuditEntry.objects.filter(id__gt=prev_id, id__lte=last_id)
        .order_by("id")
        .values_list(*_FIELDS, "prev_hash", "hash")
        .iterator(chunk_size=2000)
    )
    for row in rows:
        entry_id, prev_hash, own_hash = row[0], row[-2], row[-1]
        content = _canonical_values(dict(zip(_FIELDS, row, strict=False)))
        consistent = _chain_hash(prev_hash, content) == own_hash
        if entry_id != prev_id + 1:
            scan.broken = Break(prev_id + 1, f"missing (next entry present is #{entry_id})")
            return scan
        if prev_hash != scan.head_hash:
            if prev_id > 0 and consistent:
                scan.broken = Break(
                    prev_id,
                    f"rewritten: its content and hash were replaced (entry #{entry_id} "
                    "chained to a different hash)",
                )
                scan.checked -= 1
            else:
                scan.broken = Break(entry_id, "does not chain to the previous entry (reordered?)")
            return scan
        if not consistent:
            scan.broken = Break(entry_id, "content does not match its hash (edited)")
            return scan
        acc.append(merkle.leaf_hash(content))
        scan.checked, scan.head_hash, prev_id = acc.size, own_hash, entry_id
        if acc.size in sizes:
            scan.roots[acc.size], scan.chain[acc.size] = acc.root().hex(), own_hash
            scan.edges[acc.size] = [h.hex() for h in acc.edge()]
    beyond = AuditEntry.objects.filter(id__gt=last_id).aggregate(m=models.Max("id"))["m"]
    if beyond is not None:
        # An append commits its entry and the head together: unless the head now covers the
        # entries past the one read first, it was moved back or deleted.
        now = AuditHead.objects.filter(pk=1).first()
        if now is None or now.last_id < beyond:
            scan.broken = Break(
                last_id + 1,
                f"entries up to #{beyond} lie past the recorded head #{last_id} "
                "(the head was moved back or deleted)",
            )
    elif last_id != prev_id:
        scan.broken = Break(
            prev_id + 1, f"chain ends before the recorded head #{last_id} (deleted)"
        )
    elif last_hash != scan.head_hash and prev_id > 0:
        scan.broken = Break(
            prev_id,
            "rewritten: its content and hash were replaced (the head recorded a different hash)",
        )
        scan.checked -= 1
    scan.roots[0], scan.chain[0] = merkle.EMPTY_ROOT.hex(), GENESIS
    scan.roots[acc.size], scan.chain[acc.size] = acc.root().hex(), scan.head_hash
    scan.edge = [h.hex() for h in acc.edge()]
    return scan


def verify(
    checkpoints: Sequence[tuple[str, Checkpoint]] | None = None,
) -> tuple[int, Break | None]:
    """Recompute the chain and compare it with signed checkpoints (by default every file in
    ``H3LAB_AUDIT_CHECKPOINT_DIR``; pass a list to check those instead). Returns (entries
    checked, first break or None): a break in the chain itself first, else the first
    checkpoint the log no longer matches."""
    if checkpoints is None:
        checkpoints, problems = stored_checkpoints()
        if problems:
            label, problem = problems[0]
            return 0, Break(None, f"checkpoint {label}: {problem}")
    scan = _scan({cp.tree_size for _, cp in checkpoints})
    if scan.broken is not None:
        return scan.checked, scan.broken
    broken = _against(scan, checkpoints)
    return scan.checked, broken


def _against(scan: _Scan, checkpoints: Sequence[tuple[str, Checkpoint]]) -> Break | None:
    """The first checkpoint the (internally consistent) log contradicts, located as closely
    as the checkpoints allow: after the largest one that still matches."""
    matched = [0]
    failures: list[Break] = []
    for label, cp in sorted(checkpoints, key=lambda item: item[1].tree_size):
        if cp.tree_size > scan.checked:
            failures.append(
                Break(
                    scan.checked + 1,
                    f"missing: checkpoint {label} ({cp.created}) covers {cp.tree_size} entries "
                    f"but the log has {scan.checked} (entries deleted and the head moved back)",
                )
            )
        elif (scan.roots[cp.tree_size], scan.chain[cp.tree_size]) != (cp.root_hash, cp.head_hash):
            lo, hi = _differing(scan, cp, max(size for size in matched if size < cp.tree_size))
            failures.append(
                Break(
                    lo,
                    f"history rewritten: entries #{lo}..#{hi} no longer match checkpoint "
                    f"{label} ({cp.created}); entries up to #{lo - 1} match",
                )
            )
        else:
            matched.append(cp.tree_size)
    return min(failures, key=lambda b: b.entry_id or 0) if failures else None


def _differing(scan: _Scan, cp: Checkpoint, matched: int) -> tuple[int, int]:
    """The narrowest range of entries that holds the first change against ``cp``: after the
    largest checkpoint that still matches, within the first subtree of ``cp``'s signed Merkle
    edge whose root the log no longer gives."""
    lo, hi, start = matched + 1, cp.tree_size, 1
    ours = scan.edges.get(cp.tree_size, [])
    if len(ours) == len(cp.edge):
        for size, theirs, mine in zip(merkle.edge_sizes(cp.tree_size), cp.edge, ours, strict=True):
            if theirs != mine:
                return max(lo, start), min(hi, start + size - 1)
            start += size
    return lo, hi


# --- signed checkpoints ----------------------------------------------------------------------


class AuditBroken(Exception):
    """The log does not verify, so no checkpoint is signed for it."""


def _signing_key() -> Ed25519PrivateKey:
    """The checkpoint key: H3LAB_AUDIT_KEY, else H3LAB_AUDIT_KEY_FILE (created on first use).

    SECURITY: the key never enters the database; whoever controls only the database can
    rewrite rows but cannot sign a checkpoint that matches the rewrite."""
    if settings.H3LAB_AUDIT_KEY:
        return checkpoint.private_key_from_seed(settings.H3LAB_AUDIT_KEY)
    path = Path(settings.H3LAB_AUDIT_KEY_FILE)
    if not path.exists():
        log.warning("creating the audit checkpoint key %s", path)
        checkpoint.create_key_file(path)
    return checkpoint.load_private_key(path)


def public_key() -> Ed25519PublicKey:
    return _signing_key().public_key()


def trusted_keys(extra: Iterable[Ed25519PublicKey] = ()) -> dict[str, Ed25519PublicKey]:
    """Keys whose checkpoints count: the configured key, H3LAB_AUDIT_PUBLIC_KEYS, ``extra``."""
    keys = [*extra]
    for pem in settings.H3LAB_AUDIT_PUBLIC_KEYS:
        keys.append(checkpoint.load_public_key_pem(Path(pem).read_bytes()))
    if settings.H3LAB_AUDIT_KEY or Path(settings.H3LAB_AUDIT_KEY_FILE).exists():
        keys.append(public_key())
    return {checkpoint.key_id(k): k for k in keys}


def checkpoint_dir() -> Path:
    return Path(settings.H3LAB_AUDIT_CHECKPOINT_DIR)


def read_checkpoint(
    text: str, label: str, trusted: dict[str, Ed25519PublicKey] | None = None
) -> Checkpoint:
    """Parse a checkpoint (a file or an audit CSV) and check its signature; raises
    :class:`vault.checkpoint.CheckpointError`."""
    cp = checkpoint.extract(text)
    checkpoint.check_signature(cp, trusted if trusted is not None else trusted_keys())
    return cp


def stored_checkpoints(
    trusted: dict[str, Ed25519PublicKey] | None = None,
) -> tuple[list[tuple[str, Checkpoint]], list[tuple[str, str]]]:
    """The checkpoint files under the checkpoint folder whose signatures verify, and the
    problems with the others (a file that is unreadable or forged is itself an alarm)."""
    trusted = trusted if trusted is not None else trusted_keys()
    good: list[tuple[str, Checkpoint]] = []
    problems: list[tuple[str, str]] = []
    folder = checkpoint_dir()
    for path in sorted(folder.glob("checkpoint-*.json")) if folder.is_dir() else []:
        try:
            good.append((path.name, read_checkpoint(path.read_text(), path.name, trusted)))
        except (checkpoint.CheckpointError, OSError) as exc:
            problems.append((path.name, str(exc)))
    return good, problems


def _newest_stored(trusted: dict[str, Ed25519PublicKey]) -> Checkpoint | None:
    """The newest stored checkpoint that verifies, reading files newest first (names sort by
    tree size), so an export does not read the whole folder."""
    folder = checkpoint_dir()
    for path in sorted(folder.glob("checkpoint-*.json"), reverse=True) if folder.is_dir() else []:
        try:
            return read_checkpoint(path.read_text(), path.name, trusted)
        except (checkpoint.CheckpointError, OSError) as exc:
            log.error("audit checkpoint %s skipped: %s", path.name, exc)
    return None


def write_checkpoint(*, incremental: bool = False) -> tuple[Checkpoint, Path | None]:
    """Sign the current head and write it under the checkpoint folder, after checking the chain
    and every stored checkpoint; raises :class:`AuditBroken` instead of signing a log that does
    not verify. When the newest stored checkpoint already covers the whole log, returns it
    (and no path) rather than writing another.

    ``incremental``: check and hash only the entries after the newest stored checkpoint,
    continuing from its signed chain hash and Merkle edge (what an export does on a request;
    the periodic task and the command check everything). A rewrite of older entries is not
    looked for then, but cannot be blessed either: the new head extends the signed one, so
    every earlier checkpoint still contradicts the rewritten rows."""
    trusted = trusted_keys()
    key = _signing_key()
    trusted.setdefault(checkpoint.key_id(key.public_key()), key.public_key())
    newest = _newest_stored(trusted) if incremental else None
    if newest is not None and newest.edge:
        scan = _scan(set(), since=newest)
        broken = scan.broken
    else:
        stored, problems = stored_checkpoints(trusted)
        if problems:
            label, problem = problems[0]
            raise AuditBroken(f"checkpoint {label}: {problem}")
        newest = max((cp for _, cp in stored), key=lambda cp: cp.tree_size, default=None)
        scan = _scan({cp.tree_size for _, cp in stored})
        broken = scan.broken or _against(scan, stored)
    if broken is not None:
        raise AuditBroken(f"audit chain broken at {broken}")
    checked = scan.checked
    if newest is not None and newest.tree_size == checked:
        return newest, None
    cp = checkpoint.sign(
        key,
        tree_size=checked,
        root_hash=scan.roots[checked],
        head_hash=scan.chain[checked],
        created=_iso(timezone.now()),
        edge=tuple(scan.edge),
    )
    return cp, checkpoint.write_file(checkpoint_dir(), cp)


def latest_checkpoint() -> Checkpoint | None:
    """The newest stored checkpoint a trusted key signed (for the audit page); creates no key."""
    return _newest_stored(trusted_keys())


def current_checkpoint() -> Checkpoint | None:
    """A checkpoint of the log as it is now, for embedding in exports: a fresh one (checked
    incrementally), or (when the log does not verify, which is logged as an error) the newest
    stored one, signed while it still did."""
    try:
        return write_checkpoint(incremental=True)[0]
    except AuditBroken as exc:
        log.error("audit log does not verify; embedding the last good checkpoint: %s", exc)
    return _newest_stored(trusted_keys())


def csv_trailer() -> list[str] | None:
    """The last row of an audit CSV export: ``# h3lab-audit-checkpoint`` and the checkpoint."""
    cp = current_checkpoint()
    return [checkpoint.CSV_MARKER, cp.to_line()] if cp is not None else None


def proofs(entry_id: int, cp: Checkpoint) -> dict[str, Any]:
    """RFC 6962 proofs against checkpoint ``cp`` (which must match the log): that entry
    ``entry_id`` is leaf ``entry_id - 1`` of its tree, and that ``cp`` extends the newest stored
    checkpoint before it. Hex strings, for verifiers that keep only checkpoints."""
    if not 1 <= entry_id <= cp.tree_size:
        raise ValueError(f"entry #{entry_id} is not covered by a checkpoint of {cp.tree_size}")
    rows = AuditEntry.objects.filter(id__lte=cp.tree_size).order_by("id").values_list(*_FIELDS)
    leaves = [
        merkle.leaf_hash(_canonical_values(dict(zip(_FIELDS, row, strict=True))))
        for row in rows.iterator(chunk_size=2000)
    ]
    if merkle.root(leaves).hex() != cp.root_hash:
        raise ValueError("the log no longer matches the checkpoint (run verify_audit)")
    out: dict[str, Any] = {
        "entry": entry_id,
        "leaf_hash": leaves[entry_id - 1].hex(),
        "tree_size": cp.tree_size,
        "root_hash": cp.root_hash,
        "inclusion_proof": [h.hex() for h in merkle.inclusion_proof(entry_id - 1, leaves)],
    }
    earlier = [c for _, c in stored_checkpoints()[0] if 0 < c.tree_size < cp.tree_size]
    if earlier:
        old = max(earlier, key=lambda c: c.tree_size)
        out["previous_checkpoint"] = {"tree_size": old.tree_size, "root_hash": old.root_hash}
        out["consistency_proof"] = [
            h.hex() for h in merkle.consistency_proof(old.tree_size, leaves)
        ]
    return out

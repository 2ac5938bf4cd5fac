"""Signed checkpoints of the audit log: a signed tree head, as in Certificate Transparency.

A checkpoint states "the log's first ``tree_size`` entries have the RFC 6962 Merkle root
``root_hash``, and the hash chain's entry ``tree_size`` has hash ``head_hash``", signed with an
Ed25519 key that lives outside the database (a key file or the environment). Anyone holding a
checkpoint and the public key can later prove that history up to it was not rewritten,
truncated or deleted, even by someone with full control of the database.

The file is JSON; the signature covers the canonical JSON (sorted keys, no spaces) of every
field except ``signature`` itself. Pure Python + ``cryptography``: no Django import.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "h3lab-audit-checkpoint/1"
CSV_MARKER = "# h3lab-audit-checkpoint"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    tree_size: int
    root_hash: str  # hex, RFC 6962 Merkle tree head of the first tree_size entries
    head_hash: str  # hex, the hash chain's value at entry tree_size
    created: str  # ISO 8601 UTC, when it was signed
    key_id: str
    # hex roots of the tree's perfect subtrees, largest first (vault.merkle.Accumulator.edge):
    # with them the next checkpoint's root is computed from the new entries alone
    edge: tuple[str, ...] = ()
    signature: str = ""  # base64 Ed25519 over signed_bytes()
    format: str = FORMAT

    def signed_bytes(self) -> bytes:
        fields = asdict(self)
        del fields["signature"]
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=1) + "\n"

    def to_line(self) -> str:
        """One line (for the trailing row of an audit CSV)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Checkpoint:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise CheckpointError(f"not an {FORMAT} checkpoint")
            return cls(
                tree_size=int(data["tree_size"]),
                root_hash=str(data["root_hash"]),
                head_hash=str(data["head_hash"]),
                created=str(data["created"]),
                key_id=str(data["key_id"]),
                edge=tuple(str(h) for h in data.get("edge", [])),
                signature=str(data["signature"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"unreadable checkpoint: {exc}") from None


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ack-" + hashlib.sha256(raw).hexdigest()[:16]


def sign(
    private: Ed25519PrivateKey,
    *,
    tree_size: int,
    root_hash: str,
    head_hash: str,
    created: str,
    edge: tuple[str, ...] = (),
) -> Checkpoint:
    unsigned = Checkpoint(
        tree_size, root_hash, head_hash, created, key_id(private.public_key()), edge
    )
    signature = base64.b64encode(private.sign(unsigned.signed_bytes())).decode()
    return dataclasses.replace(unsigned, signature=signature)


def check_signature(checkpoint: Checkpoint, trusted: dict[str, Ed25519PublicKey]) -> None:
    """Raise :class:`CheckpointError` unless a trusted key signed ``checkpoint``."""
    public = trusted.get(checkpoint.key_id)
    if public is None:
        raise CheckpointError(
            f"signed by {checkpoint.key_id}, which is not a trusted checkpoint key "
            f"(trusted: {', '.join(sorted(trusted)) or 'none'})"
        )
    try:
        public.verify(base64.b64decode(checkpoint.signature), checkpoint.signed_bytes())
    except (InvalidSignature, ValueError):
        raise CheckpointError("signature does not verify (checkpoint forged or edited)") from None


def extract(text: str) -> Checkpoint:
    """The checkpoint in a checkpoint file, or embedded in an audit CSV export (its trailing
    ``# h3lab-audit-checkpoint`` row)."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        return Checkpoint.from_json(stripped)
    for line in reversed(text.splitlines()):
        if line.startswith(CSV_MARKER):
            row = next(csv.reader([line]))
            if len(row) >= 2:
                return Checkpoint.from_json(row[1])
    raise CheckpointError("no audit checkpoint found (neither a checkpoint file nor an audit CSV)")


# --- the key: a PEM file or a base64 seed in the environment -------------------------------------


def private_key_from_seed(b64: str) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(b64.strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise CheckpointError("the audit key must be base64 of a 32-byte Ed25519 seed") from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"{path} is not an Ed25519 private key")
    return key


def create_key_file(path: Path) -> None:
    """Write a fresh Ed25519 key (PKCS#8 PEM) to ``path``, mode 0600, atomically: a concurrent
    process either creates it or uses the one the other created.

    SECURITY: the file is created 0600 before the key is written, and linked into place only
    complete (as :func:`vault.keystore.create_key_file`)."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def public_key_pem(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key_pem(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise CheckpointError("not an Ed25519 public key")
    return key


def write_file(directory: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``directory`` atomically, named so that names sort by size
    then time. Returns the path."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = checkpoint.created.replace(":", "").replace("-", "")
    path = directory / f"checkpoint-{checkpoint.tree_size:012d}-{stamp}.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(checkpoint.to_json())
    os.replace(tmp, path)
    return path

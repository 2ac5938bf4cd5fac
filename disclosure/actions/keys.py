"""Keys: rotating and revoking the Ed25519 signing key, and re-wrapping every data key and
signing key under the current master key.

SECURITY: a private signing key exists unwrapped only in memory while it is created (here) or
while a bundle is signed (:func:`disclosure.signing.private_key`); at rest it is
AES-GCM-wrapped by the master key and bound to its key id.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.db import transaction
from django.utils import timezone

from disclosure import audit, bundles
from disclosure.models import Export, SigningKey, SigningKeyStatus
from experiments.users import ActingUser
from vault import crypto, keystore

# --- signing keys ------------------------------------------------------------------------------


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return timezone.now().strftime("h3lab-%Y%m%d-") + hashlib.sha256(raw).hexdigest()[:12]


def do_rotate_signing_key(*, acting_user: ActingUser) -> SigningKey:
    """Create a new current key; the previous current key becomes retired (still published,
    still verifies the bundles it signed)."""
    private = Ed25519PrivateKey.generate()
    raw = private.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    master = keystore.current()
    key_id = _key_id(private.public_key())
    with transaction.atomic():
        now = timezone.now()
        old = list(SigningKey.objects.select_for_update().filter(status=SigningKeyStatus.CURRENT))
        SigningKey.objects.filter(pk__in=[k.pk for k in old]).update(
            status=SigningKeyStatus.RETIRED, retired_at=now
        )
        key = SigningKey(key_id=key_id, master_key_id=master.key_id)
        key.public_key_pem = bundles.public_key_pem(private.public_key()).decode()
        key.wrapped_private_key = crypto.wrap_key(master, raw, context=key.key_context)
        key.save()
        audit.record(
            acting_user,
            "signing_key.rotate",
            key,
            old={"retired": [k.key_id for k in old]},
            new={"key_id": key_id},
        )
    return key


def do_revoke_signing_key(key: SigningKey, *, reason: str, acting_user: ActingUser) -> None:
    with transaction.atomic():
        SigningKey.objects.filter(pk=key.pk).update(
            status=SigningKeyStatus.REVOKED, revoked_at=timezone.now()
        )
        audit.record(acting_user, "signing_key.revoke", key, new={"reason": reason})


# --- master-key rotation -----------------------------------------------------------------------


def do_rewrap_keys(*, acting_user: ActingUser) -> dict[str, int]:
    """Re-wrap every data key (artifacts, partner-copy exports) and signing key under the current
    master key, without re-encrypting any data. Old master keys must still be configured to
    read what they wrapped; afterwards they can be removed. Idempotent and resumable: each row
    is updated on its own, conditionally on its old key id."""
    from experiments import storage
    from experiments.models import Artifact

    current = keystore.current()
    counts = {"artifacts": 0, "exports": 0, "signing_keys": 0}
    stale = Artifact.objects.filter(encrypted=True, wrapped_key__isnull=False)
    for artifact in stale.exclude(key_id=current.key_id).iterator(chunk_size=500):
        counts["artifacts"] += storage.rewrap(artifact, current)
    counts.update(exports=_rewrap_exports(current), signing_keys=_rewrap_signing_keys(current))
    audit.record(acting_user, "masterkey.rotate", None, new={"key_id": current.key_id, **counts})
    return counts


def _rewrap_exports(current: crypto.MasterKey) -> int:
    """Partner copies' data keys (the archives stay as they are)."""
    n = 0
    for export in Export.objects.filter(encrypted=True).exclude(master_key_id=current.key_id):
        master = keystore.keyring().get(export.master_key_id)
        key = crypto.unwrap_key(
            master, bytes(export.wrapped_key or b""), context=export.key_context
        )
        wrapped = crypto.wrap_key(current, key, context=export.key_context)
        n += Export.objects.filter(pk=export.pk, master_key_id=export.master_key_id).update(
            master_key_id=current.key_id, wrapped_key=wrapped
        )
    return n


def _rewrap_signing_keys(current: crypto.MasterKey) -> int:
    n = 0
    for key in SigningKey.objects.exclude(master_key_id=current.key_id):
        master = keystore.keyring().get(key.master_key_id)
        raw = crypto.unwrap_key(master, bytes(key.wrapped_private_key), context=key.key_context)
        wrapped = crypto.wrap_key(current, raw, context=key.key_context)
        n += SigningKey.objects.filter(pk=key.pk, master_key_id=key.master_key_id).update(
            master_key_id=current.key_id, wrapped_private_key=wrapped
        )
    return n

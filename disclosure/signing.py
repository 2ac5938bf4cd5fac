"""The platform's Ed25519 signing keys: created, rotated and unwrapped here; published by
:mod:`disclosure.publication_views`.

SECURITY: the private key exists unwrapped only in memory while a bundle is signed; at rest it
is AES-GCM-wrapped by the master key and bound to its key id.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.db import transaction
from django.utils import timezone

from disclosure import audit, bundles
from disclosure.models import SigningKey, SigningKeyStatus
from vault import crypto, keystore


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return timezone.now().strftime("h3lab-%Y%m%d-") + hashlib.sha256(raw).hexdigest()[:12]


def do_rotate_signing_key(*, acting_user: Any) -> SigningKey:
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


def do_revoke_signing_key(key: SigningKey, *, reason: str, acting_user: Any) -> None:
    with transaction.atomic():
        SigningKey.objects.filter(pk=key.pk).update(
            status=SigningKeyStatus.REVOKED, revoked_at=timezone.now()
        )
        audit.record(acting_user, "signing_key.revoke", key, new={"reason": reason})


def current_key() -> SigningKey:
    """The current signing key, created on first use."""
    key = SigningKey.objects.filter(status=SigningKeyStatus.CURRENT).first()
    return key or do_rotate_signing_key(acting_user=None)


def private_key(key: SigningKey) -> Ed25519PrivateKey:
    master = keystore.keyring().get(key.master_key_id)
    raw = crypto.unwrap_key(master, bytes(key.wrapped_private_key), context=key.key_context)
    return Ed25519PrivateKey.from_private_bytes(raw)


def rewrap_all(current: crypto.MasterKey) -> int:
    n = 0
    for key in SigningKey.objects.exclude(master_key_id=current.key_id):
        master = keystore.keyring().get(key.master_key_id)
        raw = crypto.unwrap_key(master, bytes(key.wrapped_private_key), context=key.key_context)
        wrapped = crypto.wrap_key(current, raw, context=key.key_context)
        n += SigningKey.objects.filter(pk=key.pk, master_key_id=key.master_key_id).update(
            master_key_id=current.key_id, wrapped_private_key=wrapped
        )
    return n


def trusted_public_keys() -> dict[str, Ed25519PublicKey]:
    """Keys whose signatures count: current and retired (revoked keys are excluded)."""
    keys = SigningKey.objects.exclude(status=SigningKeyStatus.REVOKED)
    return {k.key_id: bundles.load_public_key_pem(k.public_key_pem.encode()) for k in keys}

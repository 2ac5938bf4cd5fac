"""The platform's Ed25519 signing keys, read side: the current key (for signing a bundle), its
unwrapped private key, and the keys whose signatures count. Created, rotated and revoked by
:mod:`disclosure.actions.keys`; published by :mod:`disclosure.publication_views`.

SECURITY: the private key exists unwrapped only in memory while a bundle is signed; at rest it
is AES-GCM-wrapped by the master key and bound to its key id.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from disclosure import bundles
from disclosure.actions.keys import do_rotate_signing_key
from disclosure.models import SigningKey, SigningKeyStatus
from vault import crypto, keystore


def current_key() -> SigningKey:
    """The current signing key; the first export creates one (an audited rotation)."""
    key = SigningKey.objects.filter(status=SigningKeyStatus.CURRENT).first()
    return key or do_rotate_signing_key(acting_user=None)


def private_key(key: SigningKey) -> Ed25519PrivateKey:
    master = keystore.keyring().get(key.master_key_id)
    raw = crypto.unwrap_key(master, bytes(key.wrapped_private_key), context=key.key_context)
    return Ed25519PrivateKey.from_private_bytes(raw)


def trusted_public_keys() -> dict[str, Ed25519PublicKey]:
    """Keys whose signatures count: current and retired (revoked keys are excluded)."""
    keys = SigningKey.objects.exclude(status=SigningKeyStatus.REVOKED)
    return {k.key_id: bundles.load_public_key_pem(k.public_key_pem.encode()) for k in keys}

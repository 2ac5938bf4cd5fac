"""Master-key rotation: re-wrapping every data key and signing key under the current key."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model

from disclosure import audit

User = get_user_model()


def do_rewrap_keys(*, acting_user: Any) -> dict[str, int]:
    """Re-wrap every data key (artifacts, partner-copy exports) and signing key under the current
    master key, without re-encrypting any data. Old master keys must still be configured to
    read what they wrapped; afterwards they can be removed. Idempotent and resumable: each row
    is updated on its own, conditionally on its old key id."""
    from experiments import storage
    from experiments.models import Artifact
    from vault import keystore

    current = keystore.current()
    counts = {"artifacts": 0, "exports": 0, "signing_keys": 0}
    stale = Artifact.objects.filter(encrypted=True, wrapped_key__isnull=False)
    for artifact in stale.exclude(key_id=current.key_id).iterator(chunk_size=500):
        counts["artifacts"] += storage.rewrap(artifact, current)
    counts.update(_rewrap_disclosure_keys(current))
    audit.record(acting_user, "masterkey.rotate", None, new={"key_id": current.key_id, **counts})
    return counts


def _rewrap_disclosure_keys(current: Any) -> dict[str, int]:
    from disclosure import exports, signing

    return {"exports": exports.rewrap_all(current), "signing_keys": signing.rewrap_all(current)}

"""``manage.py rotate_signing_key``: a new current Ed25519 key; the old one is retired."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from disclosure.actions.keys import do_rotate_signing_key


class Command(BaseCommand):
    help = (
        "Create a new current signing key (private key wrapped by the master key). The previous "
        "current key becomes retired: still published at /keys/, still verifies old bundles."
    )

    def handle(self, *args: Any, **opts: Any) -> None:
        key = do_rotate_signing_key(acting_user=None)
        self.stdout.write(f"current signing key: {key.key_id}")
        self.stdout.write(key.public_key_pem)

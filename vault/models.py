"""The fingerprints of the master keys this deployment's data is encrypted with.

Never the keys themselves (SECURITY: keys live outside the database and its backups); only
what every process compares its keys against at start (:mod:`vault.registry`).
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class MasterKeyRecord(models.Model):
    key_id = models.CharField(max_length=64, unique=True)
    fingerprint = models.CharField(max_length=64)
    # The key new data is encrypted under; exactly one once any key is registered.
    current = models.BooleanField(default=False)
    registered_at = models.DateTimeField(default=timezone.now)
    # Retired: nothing is wrapped under it any more and it may leave the configuration.
    retired_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-current", "registered_at", "key_id"]
        constraints = [
            models.UniqueConstraint(
                fields=["current"],
                condition=models.Q(current=True),
                name="vault_one_current_master_key",
            )
        ]

    def __str__(self) -> str:
        return f"master key {self.key_id} ({self.fingerprint})"

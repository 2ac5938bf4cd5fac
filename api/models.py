"""Personal API tokens.

A token is shown to its owner once, at creation: ``h3l_<prefix>_<secret>``. Only the prefix
(for lookup) and the SHA-256 of the secret are stored. SECURITY: the secret is 256 random bits,
so a fast hash is enough (no password-style stretching needed) and a database leak yields no
usable token.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django.utils import timezone


class TokenScope(models.TextChoices):
    """What a token may do; each scope includes the ones before it (ordering defined once)."""

    READ = "read", "read — list and download"
    SUBMIT = "submit", "submit — also submit, cancel and rerun runs, record and edit findings"
    MANAGE = "manage", "manage — also review, release requests and grants"

    @classmethod
    def rank(cls, scope: str) -> int:
        return list(cls.values).index(scope)

    @classmethod
    def covers(cls, held: str, required: str) -> bool:
        return cls.rank(held) >= cls.rank(required)


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def active(self, now: datetime | None = None) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True, expires_at__gt=now or timezone.now())


class ApiToken(models.Model):
    """A user's API token. Created and revoked only through :mod:`api.actions`."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64, help_text="SHA-256 (hex) of the secret")
    scope = models.CharField(max_length=8, choices=TokenScope.choices, default=TokenScope.READ)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        # SECURITY: never the secret; this string goes into the audit log.
        return f"{self.name} (h3l_{self.prefix}…)"

    def is_active(self, now: datetime | None = None) -> bool:
        return self.revoked_at is None and self.expires_at > (now or timezone.now())

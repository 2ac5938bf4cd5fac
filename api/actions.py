"""Creating and revoking API tokens: the only code that writes :class:`api.models.ApiToken`
rows. Each change is announced on ``experiments.signals.governed_change`` (the audit log
listens) inside its transaction."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from api.models import ApiToken, TokenScope
from experiments.signals import governed_change
from experiments.users import ActingUser, User

TOKEN_PREFIX = "h3l"  # noqa: S105 -- the public marker every token starts with, not a secret
# last_used_at is a courtesy for the owner's token page, not an audit record: write it at most
# once a minute per token rather than on every request.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    plaintext: str  # shown once, never stored


def check_create_token(
    *, user: User, name: str, scope: str, days: int, acting_user: ActingUser
) -> NewToken:
    max_days = settings.H3LAB_API_TOKEN_MAX_DAYS
    if scope not in TokenScope.values:
        raise ValidationError({"scope": f"choose one of {', '.join(TokenScope.values)}"})
    if not 1 <= days <= max_days:
        raise ValidationError({"days": f"a token lives between 1 and {max_days} days"})
    if not name.strip():
        raise ValidationError({"name": "name the token after where it is used"})
    return do_create_token(
        user=user, name=name.strip()[:100], scope=scope, days=days, acting_user=acting_user
    )


def do_create_token(
    *, user: User, name: str, scope: str, days: int, acting_user: ActingUser
) -> NewToken:
    secret = secrets.token_urlsafe(32)
    with transaction.atomic():
        prefix = secrets.token_hex(6)
        while ApiToken.objects.filter(prefix=prefix).exists():  # 48 bits: practically never
            prefix = secrets.token_hex(6)
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            digest=digest(secret),
            scope=scope,
            expires_at=timezone.now() + timedelta(days=days),
        )
        governed_change.send(
            sender=ApiToken,
            actor=acting_user,
            action="api_token.create",
            obj=token,
            old=None,
            new={"prefix": prefix, "scope": scope, "expires_at": token.expires_at},
        )
    return NewToken(token=token, plaintext=f"{TOKEN_PREFIX}_{prefix}_{secret}")


def do_revoke_token(token: ApiToken, *, acting_user: ActingUser) -> bool:
    """Revoke now: the next request with it answers 401. Revoking twice changes nothing."""
    with transaction.atomic():
        n = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        if n:
            token.refresh_from_db()
            governed_change.send(
                sender=ApiToken,
                actor=acting_user,
                action="api_token.revoke",
                obj=token,
                old={"scope": token.scope},
                new={"revoked_at": token.revoked_at},
            )
    return bool(n)


class TokenInvalid(Exception):
    """The presented token is unknown, malformed, expired or revoked (message says which
    once the secret has matched)."""


def authenticate(raw: str) -> ApiToken:
    """The active token ``raw`` names; raises :class:`TokenInvalid`.

    SECURITY: the prefix only finds the row; the secret's digest is compared in constant time,
    and whether a token is expired or revoked is said only to someone holding its secret.
    """
    parts = raw.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        raise TokenInvalid("Malformed API token.")
    _, prefix, secret = parts
    token = ApiToken.objects.select_related("user").filter(prefix=prefix).first()
    if token is None or not hmac.compare_digest(token.digest, digest(secret)):
        raise TokenInvalid("Invalid API token.")
    now = timezone.now()
    if token.revoked_at is not None:
        raise TokenInvalid("This API token was revoked.")
    if token.expires_at <= now:
        raise TokenInvalid("This API token has expired.")
    if not token.user.is_active:
        raise TokenInvalid("This account is disabled.")
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token

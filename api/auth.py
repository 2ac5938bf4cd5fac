"""Authentication, scopes and rate limits of the API.

- ``Authorization: Bearer h3l_…`` (a personal token, see :mod:`api.models`), or
- the browser session (DRF's SessionAuthentication, which enforces CSRF on unsafe methods).

A token carries a scope (read < submit < manage); each view states the scope each of its
actions needs (:class:`ScopedView`) and :class:`HasScope` enforces it. A session acts with the
full rights of its user, as the web pages do. What a user may do at all is still decided by
:mod:`disclosure.policy` in the views.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from api import actions
from api.models import ApiToken, TokenScope


class TokenAuthentication(BaseAuthentication):
    keywords = (b"bearer", b"token")

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() not in self.keywords:
            return None  # not ours: the session may authenticate the request
        if len(header) != 2:
            raise AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'.")
        try:
            token = actions.authenticate(header[1].decode("ascii", "replace"))
        except actions.TokenInvalid as exc:
            raise AuthenticationFailed(str(exc)) from None
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to requests without credentials.
        return 'Bearer realm="h3lab"'


def required_scope(request: Request, view: Any) -> str:
    """The scope ``view`` needs for this request: reads need ``read``; each unsafe action
    names its scope in ``view.scopes``; an unsafe action that names none needs ``manage``
    (fail closed)."""
    if request.method in SAFE_METHODS:
        return TokenScope.READ
    action = getattr(view, "action", None) or (request.method or "").lower()
    scopes: dict[str, str] = getattr(view, "scopes", {})
    return scopes.get(action, TokenScope.MANAGE)


class HasScope(BasePermission):
    message = "This API token's scope does not allow this request."
    code = "insufficient_scope"

    def has_permission(self, request: Request, view: Any) -> bool:
        token = request.auth
        if not isinstance(token, ApiToken):
            return True  # session (or anonymous, left to the view's other permissions)
        needed = required_scope(request, view)
        if TokenScope.covers(token.scope, needed):
            return True
        self.message = (
            f"This API token has the {token.scope!r} scope; this request needs {str(needed)!r}."
        )
        return False


class _SettingsRateThrottle(SimpleRateThrottle):
    """Rates come from ``settings.H3LAB_API_RATES`` at request time, so deployments (and
    tests) change them without re-importing anything."""

    def get_rate(self) -> str | None:
        if self.scope is None:
            return None
        return settings.H3LAB_API_RATES.get(self.scope)


class TokenRateThrottle(_SettingsRateThrottle):
    """Per token: every request made with one token counts against its own budget."""

    scope = "token"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if isinstance(request.auth, ApiToken):
            return self.cache_format % {"scope": self.scope, "ident": request.auth.pk}
        return None


class AnonRateThrottle(_SettingsRateThrottle):
    """Anonymous readers of public findings, per client address."""

    scope = "anon"

    def get_cache_key(self, request: Request, view: Any) -> str | None:
        if request.user and request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}

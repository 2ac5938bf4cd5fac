"""System checks for invariants a misconfigured deployment would otherwise violate silently."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def check_secret_key(app_configs: Any, **kwargs: Any) -> list[Error]:
    if not settings.DEBUG and settings.SECRET_KEY == settings.DEV_SECRET_KEY:
        return [
            Error(
                "SECRET_KEY is the development default while DEBUG is off.",
                hint="Set SECRET_KEY in the environment.",
                id="h3lab.E001",
            )
        ]
    return []


@register()
def check_guardian_anonymous(app_configs: Any, **kwargs: Any) -> list[Error]:
    # SECURITY: a guardian anonymous user could hold object permissions that widen what
    # anonymous visitors see outside the policy module. Visibility for anonymous users comes
    # from the public tier only.
    if getattr(settings, "ANONYMOUS_USER_NAME", None) is not None:
        return [Error("ANONYMOUS_USER_NAME must be None.", id="h3lab.E002")]
    return []

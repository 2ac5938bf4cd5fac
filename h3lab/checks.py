"""System checks for invariants a misconfigured deployment would otherwise violate silently."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register
from django.core.checks import Warning as CheckWarning


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


@register(Tags.security)
def check_master_key(app_configs: Any, **kwargs: Any) -> list[Error]:
    # SECURITY: without a master key restricted artifacts can be neither stored nor read. A
    # development key file is generated only with DEBUG on; a deployment must bring its own.
    from vault import keystore
    from vault.crypto import KeyError_

    if settings.DEBUG:
        return []
    if not keystore.configured():
        return [
            Error(
                "No master key for encryption at rest while DEBUG is off.",
                hint="Set H3LAB_MASTER_KEYS=id:base64(32 random bytes) or H3LAB_MASTER_KEY_FILE.",
                id="h3lab.E010",
            )
        ]
    try:
        keystore.keyring()
    except KeyError_ as exc:
        return [Error(f"The master key configuration is invalid: {exc}", id="h3lab.E011")]
    return []


@register()
def check_reaper_timing(app_configs: Any, **kwargs: Any) -> list[CheckWarning]:
    """A dead worker's run is requeued within twice the heartbeat timeout only if the reaper
    looks at least once per timeout, and a live worker is never taken for dead only if it
    beats several times per timeout (docs/operations.md#faults)."""
    warnings: list[CheckWarning] = []
    timeout = settings.H3LAB_HEARTBEAT_TIMEOUT_S
    interval, beat = settings.H3LAB_REAPER_INTERVAL_S, settings.H3LAB_HEARTBEAT_S
    if interval > timeout:
        warnings.append(
            CheckWarning(
                f"H3LAB_REAPER_INTERVAL_S ({interval:g}) is longer than "
                f"H3LAB_HEARTBEAT_TIMEOUT_S ({timeout:g}): a dead worker's run may wait more "
                "than twice the timeout to be requeued.",
                id="h3lab.W020",
            )
        )
    if beat * 3 > timeout:
        warnings.append(
            CheckWarning(
                f"H3LAB_HEARTBEAT_S ({beat:g}) is more than a third of "
                f"H3LAB_HEARTBEAT_TIMEOUT_S ({timeout:g}): one late heartbeat requeues a live "
                "run.",
                id="h3lab.W021",
            )
        )
    return warnings

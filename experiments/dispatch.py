"""Sending jobs to the broker from a web request (or the reaper) within a bounded time.

A broker that is down refuses the connection at once, but a hung one (a paused Redis, a
network partition) accepts it and then never answers: with kombu's defaults the publish, and
the result backend's subscription that ``send_task`` makes for every task, wait far longer
than a request may take. :func:`send_job` publishes on a connection of its own whose socket
timeouts are ``H3LAB_BROKER_SEND_TIMEOUT_S``, retries once, subscribes to no result (the
database row is the source of truth for every job) and returns ``None`` instead of raising
when the broker cannot take the message: the row stays queued with no task id, the user is
told, and the reaper sends it again once the broker is back. A message that reached a broker
and is sent again is harmless: a worker claims a run (or an export) with a conditional update.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

#: What the user is told when the job could not be sent (web message and API ``notice``).
QUEUE_UNREACHABLE = "queued — the queue is unreachable; it will start when it returns"


def _transport_options(timeout: float) -> dict[str, Any]:
    """Socket timeouts for a Redis broker connection (other transports ignore them)."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "max_retries": 1,
    }


def send_job(name: str, args: list[Any], *, queue: str | None = None) -> str | None:
    """Publish task ``name`` with ``args``; its task id, or None if the broker did not take the
    message within about ``2 × H3LAB_BROKER_SEND_TIMEOUT_S`` seconds (logged as a warning)."""
    from h3lab.celery import app

    timeout = float(settings.H3LAB_BROKER_SEND_TIMEOUT_S)
    started = time.monotonic()
    options: dict[str, Any] = {"queue": queue} if queue else {}
    try:
        with app.connection_for_write(
            transport_options=_transport_options(timeout), connect_timeout=timeout
        ) as connection:
            result = app.send_task(
                name,
                args=args,
                connection=connection,
                # No result subscription: a Redis result backend would otherwise be contacted
                # (without a timeout) on every send.
                ignore_result=True,
                retry=True,
                retry_policy={
                    "max_retries": 1,
                    "interval_start": 0.2,
                    "interval_step": 0.2,
                    "interval_max": 0.2,
                },
                **options,
            )
    except Exception as exc:  # any broker failure: the caller keeps the row queued
        log.warning(
            "could not send %s%r to the broker within %.1fs (%s: %s); it stays queued and "
            "will be sent again",
            name,
            args,
            time.monotonic() - started,
            type(exc).__name__,
            exc,
        )
        return None
    return str(result.id)

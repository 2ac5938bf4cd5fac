"""Transient or not: which errors inside a job are the platform's weather, not the run's fault.

A run fails only for reasons of its own (its code, its data, its limits). A database that
restarts, a connection a failover cut, a broker that is briefly away: these are *transient*.
:func:`is_transient` classifies an exception; :func:`retry_transient` calls a function again
with bounded exponential backoff while it raises transient errors, resetting this thread's
database connection between tries (Django does not reconnect a connection the server closed),
and raises :class:`TransientError` once the budget is spent. The caller then leaves the run
for the reaper, which requeues it to resume from its checkpoint; it never marks it failed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class TransientError(Exception):
    """A transient error outlasted the retry budget; ``__cause__`` is the last one."""


def _transient_types() -> tuple[type[BaseException], ...]:
    import django.db
    import kombu.exceptions

    found: list[type[BaseException]] = [
        django.db.OperationalError,  # server gone, connection refused or reset, SQLite locked
        django.db.InterfaceError,  # "connection already closed" after the server cut it
        kombu.exceptions.OperationalError,  # broker unreachable
        ConnectionError,  # socket level: refused, reset, broken pipe
        TimeoutError,
    ]
    with contextlib.suppress(ImportError):
        import psycopg

        found += [psycopg.OperationalError, psycopg.InterfaceError]
    with contextlib.suppress(ImportError):
        import redis.exceptions

        found += [redis.exceptions.ConnectionError, redis.exceptions.TimeoutError]
    return tuple(found)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a database, broker or network
    error that may succeed when tried again. Integrity, programming and data errors are not."""
    types = _transient_types()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (TransientError, *types)):
            return True
        seen.add(id(current))
        current = current.__cause__
    return False


def reset_connection() -> None:
    """Drop this thread's database connection so the next query opens a fresh one. Inside a
    transaction it is left alone (the transaction is already lost; its owner decides)."""
    from django.db import connection

    if connection.in_atomic_block:
        return
    with contextlib.suppress(Exception):
        connection.close()


def backoff_delays(budget_s: float, first: float = 0.2, cap: float = 5.0) -> list[float]:
    """The sleeps between tries: ``first``, doubling, at most ``cap`` each, summing to no more
    than ``budget_s`` (the last one shortened to fit)."""
    delays: list[float] = []
    total, delay = 0.0, first
    while total < budget_s:
        step = min(delay, cap, budget_s - total)
        delays.append(step)
        total += step
        delay *= 2
    return delays


def retry_transient(
    fn: Callable[[], T],
    *,
    budget_s: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, tried again after each transient error with exponential backoff for up to
    ``budget_s`` seconds of waiting. Other errors propagate at once; when the budget is spent,
    raises :class:`TransientError` from the last transient error."""
    delays = backoff_delays(budget_s)
    for attempt in range(len(delays) + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            reset_connection()
            if attempt == len(delays):
                raise TransientError(f"{what}: still failing after {budget_s:g}s: {exc}") from exc
            log.warning(
                "%s: %s: %s; retrying in %.1fs", what, type(exc).__name__, exc, delays[attempt]
            )
            sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover

"""A Redis cache that degrades to a per-process memory cache while Redis is unreachable.

The default cache backs the API's rate limits (api/auth.py, through DRF's throttles) and
whatever else caches in a request. With Django's plain Redis backend every request fails with
a 500 while Redis is down, and hangs while it is paused. Here every operation has short socket
timeouts (``socket_timeout``/``socket_connect_timeout`` in ``OPTIONS``, set in settings); an
error opens a circuit for ``FALLBACK_RETRY_S`` seconds, during which every operation goes to
a local-memory cache of this process at once (no request waits on a dead Redis twice), with
one warning per outage window in the log. Then Redis is tried again.

What degrades: rate-limit counters count per process instead of per deployment (a client may
get up to ``workers × threads`` times its rate while Redis is down); cached sessions, if
``SESSION_ENGINE`` were set to a cache engine, would live per process (the default engine is
the database, so logins do not depend on Redis).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What counts as "Redis is unreachable" (refused, reset, timed out, or a protocol failure).
UNREACHABLE = (RedisError, OSError)


class ResilientRedisCache(RedisCache):
    """:class:`RedisCache` with a per-process fallback (see the module docstring).

    ``OPTIONS["FALLBACK_RETRY_S"]`` (default 10): how long to stay on the fallback after an
    error before trying Redis again. Other options go to the Redis connection pool."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        params = dict(params)
        options = dict(params.get("OPTIONS") or {})
        self.retry_s = float(options.pop("FALLBACK_RETRY_S", 10.0))
        params["OPTIONS"] = options
        super().__init__(server, params)
        self.fallback = LocMemCache(
            f"h3lab-fallback-{id(self)}",
            {"TIMEOUT": params.get("TIMEOUT", 300), "OPTIONS": {"MAX_ENTRIES": 10_000}},
        )
        self._down_until = 0.0
        self._lock = threading.Lock()

    # --- the circuit ---------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while operations go to the per-process fallback."""
        return time.monotonic() < self._down_until

    def _trip(self, exc: BaseException) -> None:
        with self._lock:
            if self.degraded:
                return
            self._down_until = time.monotonic() + self.retry_s
        log.warning(
            "cache unreachable (%s: %s): using a per-process cache for %.0fs "
            "(rate limits count per process meanwhile)",
            type(exc).__name__,
            exc,
            self.retry_s,
        )

    def _do(self, redis_call: Callable[[], T], local_call: Callable[[], T]) -> T:
        if self.degraded:
            return local_call()
        try:
            return redis_call()
        except UNREACHABLE as exc:
            self._trip(exc)
            return local_call()

    def ping(self) -> bool:
        """Ask Redis itself (bypassing the fallback); raises when it does not answer."""
        return bool(self._cache.get_client(write=True).ping())

    # --- the cache API -------------------------------------------------------------------------

    def add(self, key: Any, value: Any, timeout: Any = None, version: int | None = None) -> bool:
        return self._do(
            lambda: super(ResilientRedisCache, self).add(key, value, timeout, version),
            lambda: self.fallback.add(key, value, timeout, version),
        )

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self._do(
            lambda: super(ResilientRedisCache, self).get(key, default, version),
            lambda: self.fallback.get(key, default, version),
        )

    def set(self, key: Any, value: Any, timeout: Any = None, version: int | None = None) -> None:
        self._do(
            lambda: super(ResilientRedisCache, self).set(key, value, timeout, version),
            lambda: self.fallback.set(key, value, timeout, version),
        )

    def touch(self, key: Any, timeout: Any = None, version: int | None = None) -> bool:
        return self._do(
            lambda: super(ResilientRedisCache, self).touch(key, timeout, version),
            lambda: self.fallback.touch(key, timeout, version),
        )

    def delete(self, key: Any, version: int | None = None) -> bool:
        return self._do(
            lambda: super(ResilientRedisCache, self).delete(key, version),
            lambda: self.fallback.delete(key, version),
        )

    def get_many(self, keys: Any, version: int | None = None) -> dict[Any, Any]:
        return self._do(
            lambda: super(ResilientRedisCache, self).get_many(keys, version),
            lambda: self.fallback.get_many(keys, version),
        )

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._do(
            lambda: super(ResilientRedisCache, self).has_key(key, version),
            lambda: self.fallback.has_key(key, version),
        )

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return self._do(
            lambda: super(ResilientRedisCache, self).incr(key, delta, version),
            lambda: self.fallback.incr(key, delta, version),
        )

    def set_many(
        self, data: dict[Any, Any], timeout: Any = None, version: int | None = None
    ) -> list[Any]:
        return self._do(
            lambda: super(ResilientRedisCache, self).set_many(data, timeout, version),
            lambda: self.fallback.set_many(data, timeout, version),
        )

    def delete_many(self, keys: Any, version: int | None = None) -> None:
        self._do(
            lambda: super(ResilientRedisCache, self).delete_many(keys, version),
            lambda: self.fallback.delete_many(keys, version),
        )

    def clear(self) -> None:
        self.fallback.clear()
        self._do(lambda: super(ResilientRedisCache, self).clear(), lambda: None)

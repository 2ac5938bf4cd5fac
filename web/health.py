"""Liveness and readiness probes for load balancers, compose and orchestrators.

- ``GET /healthz``: liveness. The process is up and answering; touches nothing else, so a
  database outage does not get a healthy web process restarted.
- ``GET /readyz``: readiness. The database, the broker, the cache and artifact storage are
  each checked in parallel with ``H3LAB_READY_TIMEOUT_S`` to answer; 200 when all are fine,
  503 otherwise, with one JSON entry per component::

      {"status": "unavailable",
       "checks": {"database": {"ok": true, "ms": 1.9},
                  "broker": {"ok": false, "ms": 2000.4, "error": "timed out"}, ...}}

:class:`HealthCheckMiddleware` answers both first in the middleware chain: no host check (a
probe addresses the container by IP or ``localhost``), no HTTPS redirect (probes speak plain
HTTP inside the network), no session, no CSP. SECURITY: the answers carry no secret, no URL,
host name or exception message, only each component's state and the exception's class name;
they say no more than whether the site is working, which any visitor can find out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

Check = Callable[[float], None]


def database_check() -> Check:
    """The database check, bound in the request thread: the pool thread that runs it opens a
    connection of its own with this thread's settings (and a connect timeout no longer than
    the probe's), and closes it."""
    from django.db import connections

    current = connections["default"]
    wrapper_class, settings_dict = type(current), {**current.settings_dict, "CONN_MAX_AGE": 0}

    def check(timeout: float) -> None:
        options = dict(settings_dict.get("OPTIONS") or {})
        if current.vendor == "postgresql":
            options["connect_timeout"] = max(1, round(timeout))
        probe = wrapper_class({**settings_dict, "OPTIONS": options}, alias="readyz")
        try:
            with probe.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
        finally:
            probe.close()

    return check


def check_broker(timeout: float) -> None:
    from h3lab.celery import app

    url = str(app.conf.broker_write_url or "")
    if url.startswith("filesystem://"):
        options = app.conf.broker_transport_options or {}
        folder = Path(str(options.get("data_folder_in", "")))
        if not (folder.is_dir() and os.access(folder, os.W_OK)):
            raise OSError("broker folder missing or not writable")
        return
    if url.startswith(("redis://", "rediss://", "unix://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        finally:
            client.close()
        return
    with app.connection_for_write(connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=max(1, round(timeout)))


def check_cache(timeout: float) -> None:
    from django.core.cache import caches

    cache: Any = caches["default"]
    if hasattr(cache, "ping"):  # web.cache.ResilientRedisCache: ask Redis, not the fallback
        cache.ping()
        return
    cache.set("h3lab:readyz", "1", 10)
    if cache.get("h3lab:readyz") != "1":
        raise RuntimeError("cache lost a value")


def check_storage(timeout: float) -> None:
    from django.core.files.storage import FileSystemStorage, storages

    from experiments.storage_backends import check_bucket, is_object_storage

    # The data folder, and the artifact/export stores when they are a bucket (H3LAB_STORAGE=s3;
    # as folders they live under the data folder and are made on first use).
    for alias in ("default", "artifacts", "exports"):
        storage = storages[alias]
        if isinstance(storage, FileSystemStorage):
            root = Path(storage.location)
            if alias == "default" and not (root.is_dir() and os.access(root, os.W_OK)):
                raise OSError("artifact storage missing or not writable")
            continue
        if is_object_storage(storage):  # the bucket exists and the keys may use it
            check_bucket(storage)
        else:
            storage.exists("readyz-probe")  # any other backend: one round trip


def checks() -> dict[str, Check]:
    return {
        "database": database_check(),
        "broker": check_broker,
        "cache": check_cache,
        "storage": check_storage,
    }


def _error(exc: BaseException) -> str:
    if isinstance(exc, FutureTimeout | TimeoutError):
        return "timed out"
    return type(exc).__name__


def readiness(timeout: float | None = None) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Run every check in parallel; (all fine?, per-component results)."""
    limit = float(settings.H3LAB_READY_TIMEOUT_S if timeout is None else timeout)
    to_run = checks()
    pool = ThreadPoolExecutor(max_workers=len(to_run), thread_name_prefix="readyz")
    started = time.monotonic()
    futures = {name: pool.submit(check, limit) for name, check in to_run.items()}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, future in futures.items():
            remaining = max(0.0, limit - (time.monotonic() - started))
            try:
                future.result(timeout=remaining)
                results[name] = {"ok": True}
            except Exception as exc:  # any failure of a component is "not ready"
                results[name] = {"ok": False, "error": _error(exc)}
            results[name]["ms"] = round((time.monotonic() - started) * 1000, 1)
    finally:
        # A check stuck past the deadline finishes on its own socket timeout; don't wait.
        pool.shutdown(wait=False, cancel_futures=True)
    return all(r["ok"] for r in results.values()), results


def _json(body: dict[str, Any], status: int) -> HttpResponse:
    response = JsonResponse(body, status=status)
    response["Cache-Control"] = "no-store"
    return response


def healthz(request: HttpRequest) -> HttpResponse:
    return _json({"status": "ok"}, 200)


def readyz(request: HttpRequest) -> HttpResponse:
    ok, checks = readiness()
    return _json({"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503)


PROBES: dict[str, Callable[[HttpRequest], HttpResponse]] = {
    "/healthz": healthz,
    "/readyz": readyz,
}


class HealthCheckMiddleware:
    """Answers ``/healthz`` and ``/readyz`` (GET or HEAD) before any other middleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        probe = PROBES.get(request.path_info.rstrip("/") or "/")
        if probe is not None and request.method in ("GET", "HEAD"):
            return probe(request)
        return self.get_response(request)

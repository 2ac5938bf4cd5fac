"""Request and response hardening for every page: NUL bytes refused, security headers set.

SECURITY: a NUL byte in a query or form value reaches PostgreSQL text comparisons, which
refuse it with an error (a 500); no legitimate form or link carries one, so it is refused at
the door with a 400. Every HTML page gets a strict Content-Security-Policy: scripts and styles
come only from this origin's static files (the templates hold no inline script, handler or
style attribute), images from this origin or ``data:``, and nothing may frame the page. A
response that already sets its own policy (downloads' sandbox, the API docs) keeps it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

from web.errors import DATABASE_DOWN, database_unavailable

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)
PERMISSIONS_POLICY = ", ".join(
    f"{feature}=()"
    for feature in (
        "accelerometer",
        "camera",
        "display-capture",
        "geolocation",
        "gyroscope",
        "interest-cohort",
        "magnetometer",
        "microphone",
        "payment",
        "usb",
    )
)

ViewFunc = Callable[..., HttpResponse]

NUL_MESSAGE = "Request parameters must not contain NUL bytes."


def _has_nul(pairs: Iterable[tuple[str, list[str]]]) -> bool:
    return any("\x00" in key or any("\x00" in v for v in values) for key, values in pairs)


class RejectNulBytesMiddleware:
    """Answers 400 when a query or form parameter (name or value) contains a NUL byte.

    JSON bodies are checked by the API's parser (:class:`api.parsers.JSONParser`)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if _has_nul(request.GET.lists()) or (
            request.method == "POST"
            and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data")
            and _has_nul(request.POST.lists())
        ):
            if request.path.startswith("/api/"):  # the API's error body (api/errors.py)
                error = {"code": "parse_error", "message": NUL_MESSAGE, "fields": {}}
                return JsonResponse({"error": error}, status=400)
            return HttpResponseBadRequest(NUL_MESSAGE, content_type="text/plain; charset=utf-8")
        return self.get_response(request)


class SecurityHeadersMiddleware:
    """Content-Security-Policy on HTML responses (unless set already), Permissions-Policy on
    every response. Referrer-Policy comes from Django's SecurityMiddleware
    (``SECURE_REFERRER_POLICY``)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.get("Content-Type", "").startswith("text/html"):
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        response.headers.setdefault("Permissions-Policy", PERMISSIONS_POLICY)
        return response


def csp_override(policy: str) -> Callable[[ViewFunc], ViewFunc]:
    """A view decorator: this view's pages carry ``policy`` instead of the site's."""

    def decorate(view: ViewFunc) -> ViewFunc:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            response = view(request, *args, **kwargs)
            response.headers["Content-Security-Policy"] = policy
            return response

        return wrapped

    return decorate


class DatabaseUnavailableMiddleware:
    """A view that fails because the database is down answers 503 (web/errors.py) instead of
    500; failures outside views reach the same answer through ``handler500``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DATABASE_DOWN):
            return database_unavailable(request, exception)
        return None


class ServerTimingMiddleware:
    """With ``H3LAB_SERVER_TIMING`` on (the load benchmark, ``manage.py bench_web``), every
    response carries ``Server-Timing: app;dur=<ms>, cpu;dur=<ms>, db;dur=<ms>;desc="<n>
    queries"``: the wall time spent in Django (all middleware and the view, rendering
    included), the serving thread's CPU time for it, and the time in SQL, measured in the
    worker, so a benchmark can tell server time from queueing time under load.

    SECURITY: off by default. Query counts and timings differ between code paths, and a 404
    for "forbidden" must look like a 404 for "missing"; production responses carry neither.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        from django.conf import settings

        if not settings.H3LAB_SERVER_TIMING:
            return self.get_response(request)
        from django.db import connection

        sql = _SqlTimer()
        start, cpu_start = time.perf_counter(), time.thread_time()
        with connection.execute_wrapper(sql):
            response = self.get_response(request)
        total = (time.perf_counter() - start) * 1000
        # The CPU time of the thread serving this request: what the code costs, unlike wall
        # time barely inflated when other processes want the CPU, and (unlike the process's
        # CPU time) not mixed with other requests served by threads of the same worker.
        cpu = (time.thread_time() - cpu_start) * 1000
        response.headers["Server-Timing"] = (
            f"app;dur={total:.2f}, cpu;dur={cpu:.2f}, "
            f'db;dur={sql.seconds * 1000:.2f};desc="{sql.count} queries"'
        )
        return response


class _SqlTimer:
    """A ``connection.execute_wrapper``: counts the statements and the time spent in them."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - start
            self.count += 1

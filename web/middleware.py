"""Request and response hardening for every page: NUL bytes refused, security headers set.

SECURITY: a NUL byte in a query or form value reaches PostgreSQL text comparisons, which
refuse it with an error (a 500); no legitimate form or link carries one, so it is refused at
the door with a 400. Every HTML page gets a strict Content-Security-Policy: scripts and styles
come only from this origin's static files (the templates hold no inline script, handler or
style attribute), images from this origin or ``data:``, and nothing may frame the page. A
response that already sets its own policy (downloads' sandbox, the API docs) keeps it.
"""

from __future__ import annotations

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

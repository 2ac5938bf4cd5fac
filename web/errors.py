"""A database outage answers 503, not 500: a maintenance page for browsers, a JSON error for
the API, both with ``Retry-After``.

Two ways in, one answer (:func:`database_unavailable`):

- :class:`web.middleware.DatabaseUnavailableMiddleware` turns a view's
  ``OperationalError``/``InterfaceError`` into it (with DEBUG on too);
- :func:`server_error` (``handler500``) does the same for failures outside views, such as the
  session or the user loaded by a middleware; any other error stays a 500 (JSON under
  ``/api/``, Django's plain page elsewhere).

Neither touches the database, the session or the user: the page is rendered without a request.
SECURITY: neither says more than "the database is unavailable"; the exception (with host names)
goes to the log only.
"""

from __future__ import annotations

import logging
import sys

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string
from django.views import defaults

log = logging.getLogger(__name__)

#: The exceptions that mean "the database is not answering" (refused, reset, timed out, gone).
DATABASE_DOWN = (OperationalError, InterfaceError)

DETAIL = "The database is temporarily unavailable; try again shortly."
SERVER_ERROR = "Server error: the operators have been told."


def database_unavailable(request: HttpRequest, exc: BaseException) -> HttpResponse:
    """503 with ``Retry-After``: JSON under ``/api/``, the maintenance page elsewhere."""
    log.error("database unavailable on %s %s: %s", request.method, request.path, exc)
    retry_after = int(settings.H3LAB_DB_RETRY_AFTER_S)
    response: HttpResponse
    if request.path.startswith("/api/"):
        body = {
            "detail": DETAIL,
            "code": "database_unavailable",
            # The API's usual error shape (api/errors.py), so clients need only one parser.
            "error": {"code": "database_unavailable", "message": DETAIL, "fields": {}},
        }
        response = JsonResponse(body, status=503)
    else:
        html = render_to_string("503.html", {"retry_after": retry_after})
        response = HttpResponse(html, status=503)
    response["Retry-After"] = str(retry_after)
    response["Cache-Control"] = "no-store"
    return response


def server_error(request: HttpRequest) -> HttpResponse:
    """``handler500``: Django calls it while handling the exception, so ``sys.exc_info`` has it."""
    exc = sys.exc_info()[1]
    if isinstance(exc, DATABASE_DOWN):
        return database_unavailable(request, exc)
    if request.path.startswith("/api/"):  # API clients parse JSON, never an HTML page
        body = {
            "detail": SERVER_ERROR,
            "code": "server_error",
            "error": {"code": "server_error", "message": SERVER_ERROR, "fields": {}},
        }
        return JsonResponse(body, status=500)
    return defaults.server_error(request)

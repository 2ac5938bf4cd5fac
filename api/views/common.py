"""What every API view shares: id and body parsing, the 404 refusal, scopes and caching,
and the errors of content that cannot be produced."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.utils.cache import add_never_cache_headers
from rest_framework import exceptions, serializers, status
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request

from api.auth import HasScope
from api.serializers.common import MAX_ID
from experiments.storage import ArtifactUnavailable

if TYPE_CHECKING:
    from rest_framework.permissions import _PermissionClass

log = logging.getLogger(__name__)


def parse_id(value: Any) -> int:
    """A path or query id; anything that is not a storable id is simply not found."""
    try:
        pk = int(value)
    except (TypeError, ValueError):
        raise exceptions.NotFound("Not found.") from None
    if not 1 <= pk <= MAX_ID:
        raise exceptions.NotFound("Not found.")
    return pk


def parse_query(serializer: type[serializers.Serializer[Any]], request: Request) -> dict[str, Any]:
    parsed = serializer(data=request.query_params)
    parsed.is_valid(raise_exception=True)
    return dict(parsed.validated_data)


def parse_body(
    serializer: type[serializers.Serializer[Any]], request: Request, **kw: Any
) -> dict[str, Any]:
    parsed = serializer(data=request.data, context={"request": request}, **kw)
    parsed.is_valid(raise_exception=True)
    return dict(parsed.validated_data)


def deny() -> exceptions.NotFound:
    return exceptions.NotFound("Not found.")


class ApiViewMixin:
    """Scopes, permissions and caching shared by every API view."""

    permission_classes: Sequence[_PermissionClass] = [IsAuthenticated, HasScope]
    # Unsafe action → the token scope it needs (reads need "read"; unlisted ones "manage").
    scopes: dict[str, str] = {}

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        add_never_cache_headers(response)
        return response


class FirstRenderer(BaseContentNegotiation):
    """The download answers bytes whatever the client accepts (and errors as JSON)."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser:
        return next(iter(parsers))

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


class Unavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The content cannot be produced right now; the operators have been told."
    default_code = "unavailable"


class Destroyed(exceptions.APIException):
    status_code = status.HTTP_410_GONE
    default_detail = "This content was destroyed when its finding was retracted."
    default_code = "destroyed"


def unavailable(what: str, exc: ArtifactUnavailable) -> exceptions.APIException:
    # SECURITY: the reason given is generic; the detail goes to the operators' log.
    log.error("%s unavailable: %s", what, exc)
    return Destroyed() if exc.reason == "destroyed" else Unavailable()

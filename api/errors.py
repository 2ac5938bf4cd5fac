"""One error body for every API failure::

    {"error": {"code": "validation_error", "message": "…", "fields": {"config.train.steps": ["…"]}}}

``fields`` maps dotted paths into the request body (``runs.0``, ``config.task.seq_len``) to
messages; it is empty when the error is not about a field. ``ConfigError`` (from
:class:`h3lab.config.RunConfig`) and Django's ``ValidationError`` (from the actions) become
400s like serializer errors, so clients handle one shape.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from h3lab.config import ConfigError

NON_FIELD_KEYS = ("non_field_errors", "__all__")


class ErrorDetailSerializer(serializers.Serializer[Any]):
    code = serializers.CharField()
    message = serializers.CharField()
    # The metaclass moves declared fields into _declared_fields, so this does not shadow
    # Serializer.fields at runtime; the stubs cannot express that.
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField())
    )


class ErrorSerializer(serializers.Serializer[Any]):
    """The body of every 4xx answer."""

    error = ErrorDetailSerializer()


def flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail as ``{dotted.path: [messages]}``."""
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key in NON_FIELD_KEYS and not prefix else str(key)
            path = f"{prefix}.{name}" if prefix and name else (name or prefix)
            for k, v in flatten(value, path).items():
                out.setdefault(k, []).extend(v)
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out[prefix] = [str(item) for item in detail]
        else:
            for i, item in enumerate(detail):
                if item:
                    out.update(flatten(item, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix] = [str(detail)]
    return out


def _translate(exc: Exception) -> Exception:
    if isinstance(exc, ConfigError):
        return exceptions.ValidationError({"config": {k: [v] for k, v in exc.errors.items()}})
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"": exc.messages}
        return exceptions.ValidationError(detail)
    if isinstance(exc, Http404):
        return exceptions.NotFound("Not found.")
    if isinstance(exc, DjangoPermissionDenied):
        # SECURITY: a refusal looks like "missing" (the policy module's rule).
        return exceptions.NotFound("Not found.")
    return exc


def _code(exc: exceptions.APIException) -> str:
    if isinstance(exc, exceptions.ValidationError):
        return "validation_error"
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    exc = _translate(exc)
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response  # an unexpected error: Django's 500 handling (and logging)
    fields: dict[str, list[str]] = {}
    if isinstance(exc, exceptions.ValidationError):
        fields = flatten(exc.detail)
        general = fields.pop("", [])
        message = " ".join(general) or "Invalid input: " + "; ".join(
            f"{k}: {' '.join(v)}" for k, v in fields.items()
        )
    else:
        message = str(exc.detail)
    response.data = {"error": {"code": _code(exc), "message": message, "fields": fields}}
    return response

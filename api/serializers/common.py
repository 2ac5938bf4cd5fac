"""Fields and helpers shared by the serializers of every resource."""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

User = get_user_model()

MAX_ID = 2**63 - 1  # bigint ids: anything larger is "not found", never a database error
MAX_STEP = 2**31 - 1


def restrict(field: serializers.Field[Any, Any, Any, Any], queryset: QuerySet[Any]) -> None:
    """Limit what relation ``field`` may refer to (each item's, for a ``many=True`` field)."""
    relation = field.child_relation if isinstance(field, serializers.ManyRelatedField) else field
    if not isinstance(relation, serializers.RelatedField):
        raise TypeError(f"{field!r} is not a relation")
    # The stub types RelatedField.queryset as QuerySet | Manager, and mypy then reads the
    # assignment through Manager.__get__; a plain attribute is set at runtime.
    relation.queryset = queryset  # type: ignore[arg-type]


def finite_json(value: Any) -> Any:
    """``value`` with NaN/±inf replaced by None: strict JSON cannot carry them, and a diverged
    run's loss is NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


class FiniteFloatField(serializers.FloatField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    # DRF's stubs declare FloatField.to_representation as returning str; DRF returns a float.
    def to_representation(self, value: Any) -> float | None:  # type: ignore[override]
        number: float | None = finite_json(float(value))
        return number


@extend_schema_field(OpenApiTypes.OBJECT)
class FiniteJSONField(serializers.JSONField):
    def to_representation(self, value: Any) -> Any:
        return finite_json(value)


def user_field(field: str) -> serializers.CharField:
    """A user reference shown as the username (null when the account is gone)."""
    return serializers.CharField(source=f"{field}.username", read_only=True, allow_null=True)

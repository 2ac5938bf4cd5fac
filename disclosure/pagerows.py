"""Several lists a page shows, read in one SQL statement.

Each list is a queryset (whatever the policy or the caller built: visibility is theirs, not
this module's). It becomes a scalar subquery returning its rows as one JSON array —
``json_group_array(json_object(...))`` on SQLite, ``JSONB_AGG(JSONB_BUILD_OBJECT(...))`` on
PostgreSQL — and the rows come back as model instances: every concrete field through the
field's own ``to_python`` (datetimes in UTC), joined rows (the ``select_related`` of the list)
cached on them. A page that shows N such lists then runs one statement instead of N; the
statement's size depends on the lists asked for, not on the rows behind them.

Ordering is the queryset's ``order_by`` (or its model's ``Meta.ordering``), plain field names
only, applied after reading, ties broken by primary key; a sliced queryset keeps its slice
(``pk IN (… ORDER BY … LIMIT n)``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from django.db import connection, models
from django.db.models import F, Func, JSONField, Subquery
from django.db.models.functions import JSONObject
from django.utils import timezone

# Columns never carried into a page (a joined user's password hash).
_LEFT_OUT = frozenset({"password"})


class _JSONArrayAgg(Func):
    """The rows of a subquery as one JSON array. Not flagged as an aggregate, so the ORM adds no
    GROUP BY: the subquery is a whole-table aggregate over its WHERE."""

    function = "JSON_GROUP_ARRAY"
    output_field = JSONField()

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(compiler, connection, function="JSONB_AGG", **extra)


@dataclass(frozen=True)
class Rows:
    """One list: a queryset and the forward relations to bring along with each row."""

    queryset: models.QuerySet[Any]
    related: tuple[str, ...] = field(default=())


def _columns(model: type[models.Model], prefix: str = "") -> dict[str, F]:
    return {
        f.attname: F(prefix + f.name)
        for f in model._meta.concrete_fields
        if f.attname not in _LEFT_OUT
    }


def _related_model(model: type[models.Model], name: str) -> type[models.Model]:
    related = model._meta.get_field(name).related_model
    if not isinstance(related, type) or not issubclass(related, models.Model):
        raise TypeError(f"{model.__name__}.{name} is not a forward relation")
    return related


def _subquery(rows: Rows) -> Subquery:
    qs = rows.queryset
    model = qs.model
    if qs.query.is_sliced:
        qs = model._default_manager.filter(pk__in=qs.values("pk"))
    shape: dict[str, Any] = _columns(model)
    for name in rows.related:
        related = _related_model(model, name)
        shape[name] = JSONObject(**_columns(related, prefix=f"{name}__"))
    return Subquery(qs.order_by().values(rows=_JSONArrayAgg(JSONObject(**shape))))


def _value(f: models.Field[Any, Any], raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(f, JSONField):
        # SQLite keeps JSON as text, so a JSON column arrives as a string inside the object;
        # PostgreSQL nests it as JSON.
        return json.loads(raw) if connection.vendor == "sqlite" else raw
    value = f.to_python(raw)
    if isinstance(f, models.DateTimeField) and timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)  # SQLite stores UTC without an offset
    return value


def _instance(model: type[models.Model], data: dict[str, Any]) -> models.Model:
    fields = [f for f in model._meta.concrete_fields if f.attname in data]
    return model.from_db(
        connection.alias, [f.attname for f in fields], [_value(f, data[f.attname]) for f in fields]
    )


def _hydrate(rows: Rows, data: list[dict[str, Any]] | None) -> list[Any]:
    model = rows.queryset.model
    out = []
    for item in data or []:
        obj = _instance(model, item)
        for name in rows.related:
            rel_field = model._meta.get_field(name)
            nested = item.get(name) or {}
            related = _related_model(model, name)
            rel = _instance(related, nested) if nested.get("id") is not None else None
            rel_field.set_cached_value(obj, rel)
        out.append(obj)
    return _sorted(rows.queryset, out)


def _sorted(qs: models.QuerySet[Any], objs: list[Any]) -> list[Any]:
    model = qs.model
    order = list(qs.query.order_by) or list(model._meta.ordering or [])
    objs.sort(key=lambda o: o.pk)
    for name in reversed(order):
        if not isinstance(name, str):
            raise ValueError(f"{model.__name__}: only plain field names order a page's rows")
        descending = name.startswith("-")
        attname = model._meta.get_field(name.lstrip("-")).attname
        objs.sort(key=lambda o: _key(getattr(o, attname)), reverse=descending)
    return objs


def _key(value: Any) -> tuple[bool, Any]:
    return (value is not None, value)


def read(base: models.QuerySet[Any], lists: dict[str, Rows]) -> dict[str, list[Any]]:
    """Every list in ``lists`` in one statement (its FROM is ``base``, one row, e.g. the page's
    finding by primary key). Returns the rows of each list by name; none when ``lists`` is
    empty (no statement then)."""
    if not lists:
        return {}
    # Prefixed: a list may share its name with a field of the base model.
    columns = {f"rows_{name}": _subquery(rows) for name, rows in lists.items()}
    got = base.order_by().values(**columns).first()
    if got is None:
        return {name: [] for name in lists}
    return {name: _hydrate(rows, got[f"rows_{name}"]) for name, rows in lists.items()}

"""Several lists a page shows, read in one SQL statement.

Each list is a queryset (whatever the policy or the caller built: visibility is theirs, not
this module's), compiled by the ORM as it would be for its own read (``select_related``
joins, ordering, slices) and wrapped as a scalar subquery that returns its rows as one JSON
array of arrays — ``json_group_array(json_array(...))`` on SQLite,
``JSONB_AGG(JSONB_BUILD_ARRAY(...))`` on PostgreSQL. The rows come back as model instances:
every selected field through the field's own ``to_python`` (datetimes in UTC), joined rows
cached on them as ``select_related`` would. A page that shows N such lists then runs one
statement instead of N; the statement depends on the lists asked for, not on the rows behind
them. A joined user's password hash is left deferred.

Ordering is the queryset's ``order_by`` (or its model's ``Meta.ordering``), plain field names
only, applied again after reading (an aggregate does not promise its input's order), ties
broken by primary key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from django.db import connection, models
from django.db.models import JSONField
from django.utils import timezone

# Columns never carried into a page (a joined user's password hash).
_LEFT_OUT = frozenset({"password"})


@dataclass(frozen=True)
class Rows:
    """One list: a queryset and the forward relations to bring along with each row."""

    queryset: models.QuerySet[Any]
    related: tuple[str, ...] = field(default=())


@dataclass
class _Compiled:
    rows: Rows
    sql: str
    params: tuple[Any, ...]
    select: list[Any]
    klass_info: dict[str, Any]


def _compile(name: str, rows: Rows) -> _Compiled:
    qs = rows.queryset.select_related(*rows.related) if rows.related else rows.queryset
    compiler = qs.query.get_compiler(connection=connection)
    inner, params = compiler.as_sql(with_col_aliases=True)
    columns = ", ".join(connection.ops.quote_name(alias) for _, _, alias in compiler.select)
    alias = connection.ops.quote_name(f"rows_{name}")
    if connection.vendor == "postgresql":
        agg = f"COALESCE(JSONB_AGG(JSONB_BUILD_ARRAY({columns})), '[]'::jsonb)"
    else:
        agg = f"JSON_GROUP_ARRAY(JSON_ARRAY({columns}))"
    # SECURITY: the SQL is the ORM's own compiled query and quoted aliases; every value the
    # queryset filters on stays a parameter.
    return _Compiled(
        rows,
        f"(SELECT {agg} FROM ({inner}) {alias})",  # noqa: S608
        tuple(params),
        list(compiler.select),
        compiler.klass_info or {},
    )


def _value(f: models.Field[Any, Any], raw: Any) -> Any:
    if raw is None:
        return None
    if isinstance(f, JSONField):
        # SQLite keeps JSON as text, so a JSON column arrives as a string inside the array;
        # PostgreSQL nests it as JSON.
        return json.loads(raw) if connection.vendor == "sqlite" else raw
    value = f.to_python(raw)
    if isinstance(f, models.DateTimeField) and timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)  # SQLite stores UTC without an offset
    return value


def _instance(compiled: _Compiled, info: dict[str, Any], row: list[Any]) -> models.Model | None:
    model: type[models.Model] = info["model"]
    names, values = [], []
    for i in info["select_fields"]:
        target = compiled.select[i][0].target
        if target.attname in _LEFT_OUT:
            continue
        names.append(target.attname)
        values.append(_value(target, row[i]))
    pk = values[names.index(model._meta.pk.attname)] if model._meta.pk else None
    if pk is None:
        return None  # a null forward relation (LEFT OUTER JOIN)
    obj = model.from_db(connection.alias, names, values)
    for related in info.get("related_klass_infos", []):
        related["local_setter"](obj, _instance(compiled, related, row))
    return obj


def _hydrate(compiled: _Compiled, raw: Any) -> list[Any]:
    data = json.loads(raw) if isinstance(raw, str | bytes) else raw
    objs = [_instance(compiled, compiled.klass_info, row) for row in data or []]
    return _sorted(compiled.rows.queryset, objs)


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


def read(lists: dict[str, Rows]) -> dict[str, list[Any]]:
    """Every list in ``lists`` in one statement; the rows of each list by name. No statement
    when ``lists`` is empty."""
    if not lists:
        return {}
    compiled = [_compile(name, rows) for name, rows in lists.items()]
    sql = "SELECT " + ", ".join(c.sql for c in compiled)
    params = tuple(p for c in compiled for p in c.params)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        got = cursor.fetchone()
    return {name: _hydrate(c, raw) for name, c, raw in zip(lists, compiled, got, strict=True)}

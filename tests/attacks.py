"""Acting as a database superuser in tests: on PostgreSQL every trigger is off for the block
(``session_replication_role = replica``, which only a superuser may set); SQLite has none."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection


def raw(sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return list(cur.fetchall()) if cur.description else []


@contextmanager
def superuser() -> Iterator[None]:
    """Act as a database superuser: on PostgreSQL every trigger is off (replica mode)."""
    pg = connection.vendor == "postgresql"
    if pg:
        if not raw("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")[0][0]:
            pytest.skip("the test database role is not a superuser")
        raw("SET session_replication_role = replica")
    try:
        yield
    finally:
        if pg:
            raw("SET session_replication_role = origin")

"""The private servers fault tests rely on: they start, stop, pause and come back, and never
touch the shared ones."""

from __future__ import annotations

import socket

import pytest
import redis
from django.db import OperationalError

from experiments.models import Project
from tests import factories
from tests.servers import PrivatePostgres, PrivateRedis, private_pg, private_redis, use_database

__all__ = ["private_pg", "private_redis"]


def test_private_postgres_holds_the_schema_and_survives_a_restart(
    private_pg: PrivatePostgres, django_db_blocker: object
) -> None:
    assert private_pg.port not in (5432,)
    name = private_pg.migrated_database()
    with django_db_blocker.unblock(), use_database(private_pg.settings_dict(name)):  # type: ignore[attr-defined]
        factories.make_project("faults")
        private_pg.restart(mode="immediate")
        with pytest.raises(OperationalError):
            Project.objects.count()  # the old connection died with the server
        from django.db import connection

        connection.close()
        assert Project.objects.filter(slug="faults").count() == 1
        assert private_pg.terminate_backends(name) >= 1
    assert private_pg.sql("SELECT count(*) FROM experiments_project", name) == [(1,)]


def test_private_redis_restarts_empty_and_pauses(private_redis: PrivateRedis) -> None:
    r = redis.Redis.from_url(private_redis.url(), socket_timeout=0.5)
    r.set("k", "v")
    private_redis.pause()
    with pytest.raises(redis.exceptions.TimeoutError):
        r.get("k")
    private_redis.resume()
    r = redis.Redis.from_url(private_redis.url(), socket_timeout=2)
    assert r.get("k") == b"v"
    private_redis.restart()
    r = redis.Redis.from_url(private_redis.url(), socket_timeout=2)
    assert r.get("k") is None
    with socket.create_connection(("127.0.0.1", private_redis.port), 1):
        pass

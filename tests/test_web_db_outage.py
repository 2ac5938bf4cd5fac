"""A database outage answers 503 (a maintenance page for browsers, JSON for the API, both with
Retry-After), not a bare 500 (issue 12, item 3). PostgreSQL is a private server that the test
stops (tests/servers.py), never the shared one."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from django.db import close_old_connections
from django.test import Client, RequestFactory
from django.urls import reverse

from tests import factories
from tests.servers import PrivatePostgres, private_pg, use_database

__all__ = ["private_pg"]


@pytest.fixture
def outage_db(private_pg: PrivatePostgres, django_db_blocker: object) -> Iterator[PrivatePostgres]:
    """This process's ORM on a migrated database of the private server; restarted afterwards."""
    name = private_pg.migrated_database()
    with django_db_blocker.unblock(), use_database(private_pg.settings_dict(name)):  # type: ignore[attr-defined]
        try:
            yield private_pg
        finally:
            private_pg.start() if not private_pg.pids() else private_pg.resume()


def client() -> Client:
    # A real server answers whatever handler500 returns; the test client would re-raise.
    return Client(raise_request_exception=False)


def assert_maintenance_page(response: object) -> None:
    from django.http import HttpResponse

    assert isinstance(response, HttpResponse)
    assert response.status_code == 503
    assert response["Retry-After"] == "30"
    assert response["Content-Type"].startswith("text/html")
    page = response.content.decode()
    assert "briefly unavailable" in page and "data-maintenance" in page
    assert "Traceback" not in page and "127.0.0.1" not in page  # nothing about the server


def test_pages_and_the_api_answer_503_while_postgresql_is_down(outage_db: PrivatePostgres) -> None:
    alice = factories.make_user("alice")
    signed_in, anonymous = client(), client()
    signed_in.force_login(alice)
    assert signed_in.get(reverse("runs")).status_code == 200
    assert anonymous.get(reverse("home")).status_code == 200

    outage_db.stop()

    # The session and user are loaded by middleware (handler500's path) ...
    assert_maintenance_page(signed_in.get(reverse("runs")))
    # ... an anonymous page fails in its view (the middleware's path).
    assert_maintenance_page(anonymous.get(reverse("home")))
    for response in (
        anonymous.get(reverse("api-finding-list")),
        signed_in.get(reverse("api-run-list")),
        client().get(reverse("api-run-list"), HTTP_AUTHORIZATION="Bearer h3l_abcdefgh_0123456789"),
    ):
        assert response.status_code == 503
        assert response["Retry-After"] == "30"
        body = response.json()
        assert (body["code"], body["error"]["code"]) == ("database_unavailable",) * 2
        assert "temporarily unavailable" in body["detail"]

    ready = anonymous.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"]["ok"] is False
    assert anonymous.get("/healthz").status_code == 200, "liveness: the process itself is fine"

    outage_db.start()
    # A server drops broken connections when each request starts (the test client does not).
    close_old_connections()
    assert signed_in.get(reverse("runs")).status_code == 200, "back without a restart of the web"
    assert anonymous.get("/readyz").json()["checks"]["database"]["ok"] is True


def test_other_server_errors_stay_500_and_json_under_the_api() -> None:
    from web.errors import server_error

    for path, content_type in (("/", "text/html"), ("/api/v1/runs/", "application/json")):
        request = RequestFactory().get(path)
        try:
            raise RuntimeError("a bug")
        except RuntimeError:
            response = server_error(request)
        assert response.status_code == 500
        assert response["Content-Type"].startswith(content_type)
    assert json.loads(response.content)["code"] == "server_error"

"""/healthz (liveness) and /readyz (readiness: database, broker, cache, storage), and what
they leave out: host checks, HTTPS redirects, sessions, secrets."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from h3lab.celery import app
from tests.servers import PrivateRedis, private_redis

__all__ = ["private_redis"]

pytestmark = pytest.mark.django_db


def test_healthz_answers_without_host_check_https_redirect_or_session(
    client: Client, settings: Any
) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.ALLOWED_HOSTS = ["lab.example.org"]
    response = client.get("/healthz", HTTP_HOST="10.0.0.7:8000")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in response
    # Everything else still checks the host and redirects.
    assert client.get("/accounts/login/", HTTP_HOST="lab.example.org").status_code == 301


def test_readyz_reports_every_component_ready_in_the_embedded_setup(client: Client) -> None:
    response = client.get("/readyz")
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "cache", "storage"}
    assert all(check["ok"] is True for check in body["checks"].values())


def test_readyz_is_503_when_storage_is_missing(
    client: Client, settings: Any, tmp_path: Any
) -> None:
    settings.MEDIA_ROOT = tmp_path / "gone"
    response = client.get("/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["storage"] == {"ok": False, "error": "OSError", "ms": checks["storage"]["ms"]}
    assert checks["database"]["ok"] is True


@pytest.fixture
def redis_everywhere(
    private_redis: PrivateRedis, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> PrivateRedis:
    """Broker and cache on a private Redis, as in compose."""
    conf: Any = app.conf
    # The attribute first: Celery's broker_url reads the environment first, so patching the
    # environment first would make the "old" value saved for the undo the private server's.
    monkeypatch.setattr(conf, "broker_url", private_redis.url(0))
    monkeypatch.setenv("CELERY_BROKER_URL", private_redis.url(0))
    settings.CACHES = {
        "default": {
            "BACKEND": "web.cache.ResilientRedisCache",
            "LOCATION": private_redis.url(2),
            "OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
        }
    }
    settings.H3LAB_READY_TIMEOUT_S = 1.0
    return private_redis


@pytest.mark.parametrize("fault", ["none", "stopped", "paused"])
def test_readyz_reports_redis_as_broker_and_cache_within_its_timeout(
    client: Client, redis_everywhere: PrivateRedis, fault: str, settings: Any
) -> None:
    if fault == "none":
        # A healthy Redis answers in milliseconds, but a loaded 2-core CI machine can take
        # over a second to open the broker connection: give the healthy case room.
        settings.H3LAB_READY_TIMEOUT_S = 4.0
    if fault == "stopped":
        redis_everywhere.stop()
    elif fault == "paused":
        redis_everywhere.pause()
    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started
    redis_everywhere.resume()

    body = response.json()
    ok = fault == "none"
    assert response.status_code == (200 if ok else 503), body
    assert (body["checks"]["broker"]["ok"], body["checks"]["cache"]["ok"]) == (ok, ok)
    assert body["checks"]["database"]["ok"] is True
    assert elapsed < settings.H3LAB_READY_TIMEOUT_S + 1.5, f"/readyz took {elapsed:.1f}s"
    text = response.content.decode()
    assert str(redis_everywhere.port) not in text and "redis://" not in text  # no addresses
    # Liveness does not depend on any of it.
    assert client.get("/healthz").status_code == 200

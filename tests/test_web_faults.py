"""The web degrades instead of 500-ing (issue 12, item 3): submitting while the broker is down
or hung, the API while its cache (Redis) is down or hung, any page while PostgreSQL is down.

Every fault is made on a private server (tests/servers.py), never the shared ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from disclosure.actions.exports import check_request_export
from disclosure.models import ExportKind, ExportStatus
from experiments.actions.runs import enqueue_run
from experiments.dispatch import QUEUE_UNREACHABLE
from experiments.models import Run, RunStatus
from h3lab.celery import app
from tests import factories
from tests.conftest import Cast, Lab, login
from tests.publishing import promote
from tests.servers import PrivateRedis, private_redis
from tests.test_api import api, post
from tests.test_api_client import client_env, h3lab, make_token
from tests.test_views_experiments import FORM

__all__ = ["private_redis"]

# Real commits: a job is sent when the submitting transaction commits, as in production, so the
# response can say whether it reached the queue.
pytestmark = pytest.mark.django_db(transaction=True)

# H3LAB_BROKER_SEND_TIMEOUT_S is 2 s by default; one retry: an answer within a few seconds.
ANSWER_WITHIN_S = 8.0


@pytest.fixture
def broker(
    private_redis: PrivateRedis, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> Iterator[PrivateRedis]:
    """The Celery app publishes to a private Redis (which the test may stop or pause)."""
    url = private_redis.url(0)
    conf: Any = app.conf
    saved = (conf.broker_url, dict(conf.broker_transport_options or {}))
    monkeypatch.setenv("CELERY_BROKER_URL", url)  # Celery reads the environment first
    conf.broker_url = url
    conf.broker_transport_options = {"global_keyprefix": "fweb-test:"}
    settings.H3LAB_BROKER_SEND_TIMEOUT_S = 1.0
    try:
        yield private_redis
    finally:
        private_redis.resume()
        conf.broker_url, conf.broker_transport_options = saved


def queued_messages(server: PrivateRedis, queue: str = "cpu") -> int:
    r = redis.Redis.from_url(server.url(0), socket_timeout=5)
    return int(r.llen(f"fweb-test:{queue}"))


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    value = fn()
    return value, time.monotonic() - started


# --- the broker ------------------------------------------------------------------------------


def test_a_submission_reaches_a_healthy_broker(
    lab: Lab, as_alice: Client, broker: PrivateRedis
) -> None:
    response = as_alice.post(reverse("run-new", args=["induction"]), FORM, follow=True)
    run = Run.objects.get()
    assert run.celery_task_id != "" and run.queue_unreachable is False
    assert queued_messages(broker) == 1
    assert QUEUE_UNREACHABLE not in response.content.decode()


@pytest.mark.parametrize("fault", ["paused", "stopped"])
def test_submitting_while_the_broker_is_unreachable_answers_quickly_and_keeps_one_queued_run(
    lab: Lab,
    as_alice: Client,
    broker: PrivateRedis,
    fault: str,
) -> None:
    broker.pause() if fault == "paused" else broker.stop()

    response, elapsed = timed(
        lambda: as_alice.post(reverse("run-new", args=["induction"]), FORM, follow=True)
    )

    assert elapsed < ANSWER_WITHIN_S, f"the form answered after {elapsed:.1f}s"
    assert response.status_code == 200
    run = Run.objects.get()  # exactly one run: nothing to resubmit
    assert (run.status, run.celery_task_id, run.queue_unreachable) == (RunStatus.QUEUED, "", True)
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == reverse("run", args=[run.pk])
    assert f"Run #{run.pk} is {QUEUE_UNREACHABLE}." in page  # the flash message
    assert "data-queue-unreachable" in page  # and the run page's own notice

    # The broker returns; the reaper's re-send reaches it and the notice goes away.
    if fault == "paused":
        broker.resume()
    else:
        broker.start()
    enqueue_run(run)  # outside a transaction: sent at once
    run.refresh_from_db()
    assert run.celery_task_id != "" and run.queue_unreachable is False
    assert queued_messages(broker) == 1
    assert "data-queue-unreachable" not in as_alice.get(run.get_absolute_url()).content.decode()


def test_the_api_submits_while_the_broker_is_paused_and_flags_the_run(
    lab: Lab, broker: PrivateRedis
) -> None:
    body = {
        "project": "induction",
        "experiment": "sweep",
        "config": {"preset": "h3", "task": {"name": "induction_head"}, "train": {"steps": 10}},
    }
    broker.pause()
    client = api(lab.alice, "submit")
    response, elapsed = timed(lambda: post(client, reverse("api-run-list"), body))

    assert elapsed < ANSWER_WITHIN_S
    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["status"], data["queue_unreachable"]) == ("queued", True)
    assert Run.objects.count() == 1
    detail = client.get(reverse("api-run-detail", args=[data["id"]])).json()
    assert detail["queue_unreachable"] is True


def test_the_terminal_client_says_the_queue_is_unreachable(
    lab: Lab, broker: PrivateRedis, live_server: Any, tmp_path: Path
) -> None:
    broker.pause()
    env = client_env(live_server.url, make_token(lab.alice), tmp_path)
    submitted = h3lab(env, "submit", "--project", "induction", "--steps", "10")
    assert submitted.returncode == 0, submitted.stderr
    assert "queue is unreachable" in submitted.stderr
    assert Run.objects.get().queue_unreachable is True


# Not transactional: a flush would drop the release rules the data migrations load, which
# promote() needs; the commit callbacks are run by hand instead.
@pytest.mark.django_db
def test_an_export_requested_while_the_broker_is_stopped_stays_queued_and_says_so(
    cast: Cast, broker: PrivateRedis, django_capture_on_commit_callbacks: Any
) -> None:
    finding = promote(cast, factories.make_finding(cast.lab.project, title="Public", body="x"))
    broker.stop()
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):  # the send, as at commit
        export = check_request_export(
            kind=ExportKind.PUBLIC, findings=[finding], acting_user=cast.mara
        )
    elapsed = time.monotonic() - started
    assert elapsed < ANSWER_WITHIN_S
    export.refresh_from_db()
    assert (export.status, export.celery_task_id, export.queue_unreachable) == (
        ExportStatus.QUEUED,
        "",
        True,
    )
    page = login(cast.mara).get(reverse("export", args=[export.pk])).content.decode()
    assert "data-queue-unreachable" in page


# --- the cache (API rate limits) -------------------------------------------------------------


@pytest.fixture
def redis_cache(private_redis: PrivateRedis, settings: Any) -> PrivateRedis:
    """The default cache is the deployment's Redis cache, on a private server."""
    settings.CACHES = {
        "default": {
            "BACKEND": "web.cache.ResilientRedisCache",
            "LOCATION": private_redis.url(2),
            "OPTIONS": {
                "socket_timeout": 0.5,
                "socket_connect_timeout": 0.5,
                "FALLBACK_RETRY_S": 30.0,
            },
        }
    }
    return private_redis


def redis_keys(server: PrivateRedis) -> list[bytes]:
    keys = redis.Redis.from_url(server.url(2), socket_timeout=5).keys("*")
    return [k if isinstance(k, bytes) else k.encode() for k in keys]


def test_rate_limits_count_in_redis_while_it_is_up(
    lab: Lab, redis_cache: PrivateRedis, settings: Any
) -> None:
    settings.H3LAB_API_RATES = {"token": "100/minute", "anon": "2/minute"}
    anonymous = APIClient()
    codes = [anonymous.get(reverse("api-finding-list")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert any(b"throttle_anon" in key for key in redis_keys(redis_cache))


@pytest.mark.parametrize("fault", ["stopped", "paused"])
def test_the_api_keeps_serving_and_throttling_per_process_while_redis_is_unreachable(
    lab: Lab,
    redis_cache: PrivateRedis,
    settings: Any,
    fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.H3LAB_API_RATES = {"token": "100/minute", "anon": "3/minute"}
    redis_cache.pause() if fault == "paused" else redis_cache.stop()
    anonymous, member = APIClient(), api(lab.alice, "read")

    with caplog.at_level(logging.WARNING, logger="web.cache"):
        (codes, member_codes), elapsed = timed(
            lambda: (
                [anonymous.get(reverse("api-finding-list")).status_code for _ in range(4)],
                [member.get(reverse("api-run-list")).status_code for _ in range(4)],
            )
        )

    assert codes == [200, 200, 200, 429], "anonymous reads are served, and still limited"
    assert member_codes == [200] * 4, "token-authenticated reads are served"
    # One timeout at most: after the first failure the fallback answers at once.
    assert elapsed < 3.0, f"8 requests took {elapsed:.1f}s"
    warnings = [r for r in caplog.records if r.name == "web.cache"]
    assert len(warnings) == 1 and "per-process" in warnings[0].getMessage()


def test_redis_is_used_again_once_it_returns(
    lab: Lab, redis_cache: PrivateRedis, settings: Any
) -> None:
    from django.core.cache import cache

    settings.H3LAB_API_RATES = {"token": "100/minute", "anon": "100/minute"}
    redis_cache.stop()
    assert APIClient().get(reverse("api-finding-list")).status_code == 200
    assert getattr(cache, "degraded", False) is True
    redis_cache.start()
    cache._down_until = 0.0  # type: ignore[attr-defined]  # the retry window has passed
    assert APIClient().get(reverse("api-finding-list")).status_code == 200
    assert any(b"throttle_anon" in key for key in redis_keys(redis_cache))


def test_cached_sessions_survive_a_redis_outage(
    lab: Lab, redis_cache: PrivateRedis, settings: Any
) -> None:
    settings.SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
    client = login(lab.alice)
    redis_cache.stop()
    assert client.get(reverse("home")).status_code == 200
    assert client.get(reverse("runs")).status_code == 200

"""The progress JSON, polled every second by every open run page, answers 304 Not Modified
while nothing it shows has changed: one small read of the run, no metric points, no JSON."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments.models import MetricPoint, Run, RunStatus
from tests import factories
from tests.conftest import Lab, login

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(lab: Lab) -> Run:
    run = factories.make_run(lab.project, status=RunStatus.RUNNING, user=lab.alice)
    factories.add_metrics(run, "train_loss", [2.0, 1.5])
    return run


def poll(client: Client, run: Run, etag: str = "", after: int = 0) -> Any:
    headers = {"If-None-Match": etag} if etag else {}
    return client.get(reverse("run-progress", args=[run.pk]), {"after": after}, headers=headers)


def test_an_unchanged_run_answers_not_modified_without_reading_metric_points(
    as_alice: Client, run: Run
) -> None:
    first = poll(as_alice, run)
    assert first.status_code == 200 and first.json()["series"]["train_loss"]
    assert first["ETag"] and "private" in first["Cache-Control"]
    with CaptureQueriesContext(connection) as ctx:
        again = poll(as_alice, run, first["ETag"])
    assert again.status_code == 304 and again.content == b""
    assert not [q for q in ctx.captured_queries if "metricpoint" in q["sql"]]
    # session, user, the roles (second-factor gate), the run's live fields
    assert len(ctx.captured_queries) == 4


def test_a_heartbeat_with_new_points_changes_the_answer(as_alice: Client, run: Run) -> None:
    first = poll(as_alice, run)
    cursor = first.json()["cursor"]
    MetricPoint.objects.create(run=run, name="train_loss", step=30, value=0.5)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now(), step=30)
    fresh = poll(as_alice, run, first["ETag"], after=cursor)
    assert fresh.status_code == 200
    assert fresh.json()["step"] == 30 and fresh.json()["cursor"] > cursor
    assert fresh["ETag"] != first["ETag"]


def test_another_cursor_is_another_answer(as_alice: Client, run: Run) -> None:
    first = poll(as_alice, run)
    assert poll(as_alice, run, first["ETag"], after=first.json()["cursor"]).status_code == 200


def test_a_valid_etag_does_not_open_someone_elses_run(lab: Lab, as_alice: Client, run: Run) -> None:
    etag = poll(as_alice, run)["ETag"]
    assert poll(login(lab.bob), run, etag).status_code == 404
    assert poll(Client(), run, etag).status_code == 302  # to the login page

"""Run state moves only by conditional updates: whoever loses a race changes nothing."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from experiments.actions.runs import check_submit_run, do_cancel_run
from experiments.actions.worker import (
    do_claim_run,
    do_complete_run,
    do_fail_run,
    do_reap_stale_runs,
    do_record_heartbeat,
    do_record_progress,
)
from experiments.models import MetricPoint, Run, RunStatus
from h3lab.celery import app
from tests import factories
from tests.conftest import Lab

pytestmark = pytest.mark.django_db


class Sent:
    """Stands in for the broker: records what would have been sent."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[Any], str]] = []
        self.fail = fail

    def __call__(self, name: str, args: list[Any], queue: str, **options: Any) -> Any:
        if self.fail:
            raise ConnectionError("broker down")
        self.calls.append((name, args, queue))
        return type("Result", (), {"id": f"task-{len(self.calls)}"})()


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    broker = Sent()
    monkeypatch.setattr(app, "send_task", broker)
    return broker


def submit(lab: Lab, queue: str = "cpu") -> Run:
    return check_submit_run(
        project=lab.project,
        config=factories.tiny_config().to_dict(),
        queue=queue,
        acting_user=lab.alice,
    )


def test_the_job_is_sent_only_after_the_run_commits(
    lab: Lab, sent: Sent, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run = submit(lab, queue="gpu")
    assert sent.calls == [], "nothing is sent while the transaction is open"

    for callback in callbacks:
        callback()

    assert sent.calls == [("h3lab.jobs.run_training", [run.pk], "gpu")]
    run.refresh_from_db()
    assert run.celery_task_id == "task-1"
    assert run.status == RunStatus.QUEUED


def test_a_broker_outage_leaves_the_run_queued_for_the_reaper_to_resend(
    lab: Lab, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    monkeypatch.setattr(app, "send_task", Sent(fail=True))
    with django_capture_on_commit_callbacks(execute=True):
        run = submit(lab)
    run.refresh_from_db()
    assert (run.status, run.celery_task_id) == (RunStatus.QUEUED, "")

    Run.objects.filter(pk=run.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    broker = Sent()
    monkeypatch.setattr(app, "send_task", broker)
    with django_capture_on_commit_callbacks(execute=True):
        do_reap_stale_runs(timeout_s=30)

    assert broker.calls == [("h3lab.jobs.run_training", [run.pk], "cpu")]


def test_a_run_is_claimed_once(lab: Lab) -> None:
    run = factories.make_run(lab.project, status=RunStatus.QUEUED)

    first = do_claim_run(run.pk, host="a")
    second = do_claim_run(run.pk, host="b")

    assert first is not None and first.attempt == 1
    assert second is None
    run.refresh_from_db()
    assert (run.status, run.worker_host, run.claim) == (RunStatus.RUNNING, "a", first.token)


def test_a_cancelled_run_refuses_every_later_worker_write(lab: Lab) -> None:
    run = factories.make_run(lab.project, status=RunStatus.QUEUED)
    claim = do_claim_run(run.pk, host="w")
    assert claim is not None

    assert do_cancel_run(run, acting_user=lab.alice) is True

    token = claim.token
    assert do_record_heartbeat(run.pk, token) is False
    assert do_record_progress(run.pk, token, fields={"step": 5}, points=[("x", 5, 1.0)]) is False
    assert do_complete_run(run.pk, token, result={"status": "completed"}) is False
    assert do_fail_run(run.pk, token, error="late") is False
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.step == 0 and run.error == ""
    assert not MetricPoint.objects.filter(run=run).exists()


def test_a_worker_with_a_stale_token_cannot_write(lab: Lab) -> None:
    run = factories.make_run(lab.project, status=RunStatus.QUEUED)
    assert do_claim_run(run.pk, host="w") is not None

    assert do_record_heartbeat(run.pk, uuid.uuid4()) is False
    assert do_complete_run(run.pk, uuid.uuid4(), result={}) is False
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


@pytest.mark.parametrize("status", [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED])
def test_cancelling_a_finished_run_changes_nothing(lab: Lab, status: str) -> None:
    run = factories.make_run(lab.project, status=status)

    assert do_cancel_run(run, acting_user=lab.alice) is False

    run.refresh_from_db()
    assert run.status == status


def test_a_resumed_attempt_keeps_the_first_value_of_a_replayed_metric_point(lab: Lab) -> None:
    run = factories.make_run(lab.project, status=RunStatus.QUEUED)
    claim = do_claim_run(run.pk, host="w")
    assert claim is not None
    do_record_progress(run.pk, claim.token, fields={}, points=[("train_loss", 10, 2.0)])

    do_record_progress(run.pk, claim.token, fields={}, points=[("train_loss", 10, 9.0)])

    assert list(MetricPoint.objects.filter(run=run).values_list("value", flat=True)) == [2.0]

"""The job bridge without a broker: :func:`h3lab.jobs.execute_run` on tiny real trainings.

``transactional_db``: the worker code commits as it goes and its heartbeat thread uses a
connection of its own, exactly as on a worker, so nothing may hide inside a test transaction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from experiments.actions.runs import do_cancel_run, do_submit_run
from experiments.actions.worker import do_reap_stale_runs
from experiments.models import Artifact, MetricPoint, Run, RunStatus
from experiments.signals import governed_change
from experiments.storage import open_artifact, run_workdir
from h3lab import jobs
from h3lab.config import RunConfig
from tests import factories
from tests.conftest import Lab

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def transitions() -> Iterator[list[str]]:
    """The governed run actions announced during the test, in order."""
    seen: list[str] = []

    def receiver(sender: Any, action: str, **kw: Any) -> None:
        if action.startswith("run."):
            seen.append(action)

    governed_change.connect(receiver, weak=False, dispatch_uid="test-jobs-transitions")
    yield seen
    governed_change.disconnect(dispatch_uid="test-jobs-transitions")


def submit(lab: Lab, **train_kw: Any) -> Run:
    """A queued tiny run whose job the test executes itself (nothing sent to a broker)."""
    return do_submit_run(
        project=lab.project,
        cfg=factories.tiny_config(device="cpu", **train_kw),
        experiment_name="jobs",
        enqueue=False,
        acting_user=lab.alice,
    )


def test_a_queued_run_trains_to_success_with_metrics_and_artifacts(
    lab: Lab, transitions: list[str]
) -> None:
    run = submit(lab)
    assert run.status == RunStatus.QUEUED

    assert jobs.execute_run(run.pk) == "succeeded"

    run.refresh_from_db()
    assert transitions == ["run.submit", "run.start", "run.succeed"]
    assert run.status == RunStatus.SUCCEEDED
    assert run.attempt == 1
    assert run.step == run.total_steps == 20
    assert run.started_at is not None and run.finished_at is not None
    assert run.result["status"] == "completed"
    assert run.claim is not None  # the token of the claim that completed it
    names = set(MetricPoint.objects.filter(run=run).values_list("name", flat=True))
    assert {"train_loss", "test_loss", "test_accuracy"} <= names
    assert MetricPoint.objects.filter(run=run, name="test_accuracy", step=20).exists()

    artifacts = {a.name: a for a in Artifact.objects.filter(run=run)}
    assert {"model.safetensors", "config.json", "metrics.json", "curves.png", "train.log"} <= set(
        artifacts
    )
    for artifact in artifacts.values():
        plain = b"".join(open_artifact(artifact))  # stored encrypted; decrypted in memory
        assert (hashlib.sha256(plain).hexdigest(), len(plain)) == (artifact.sha256, artifact.size)
        assert artifact.project_id == lab.project.pk
    assert not run_workdir(run.pk).exists(), "the scratch directory is removed after success"


def test_a_duplicate_delivery_does_nothing_the_second_time(lab: Lab) -> None:
    run = submit(lab)
    assert jobs.execute_run(run.pk) == "succeeded"
    before = (MetricPoint.objects.filter(run=run).count(), Artifact.objects.filter(run=run).count())

    assert jobs.execute_run(run.pk) == "skipped"

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.attempt == 1
    after = (MetricPoint.objects.filter(run=run).count(), Artifact.objects.filter(run=run).count())
    assert after == before


def test_a_run_cancelled_before_it_starts_is_skipped(lab: Lab) -> None:
    run = submit(lab)
    assert do_cancel_run(run, acting_user=lab.alice) is True

    assert jobs.execute_run(run.pk) == "skipped"

    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert run.started_at is None
    assert run.attempt == 0
    assert not MetricPoint.objects.filter(run=run).exists()


def test_a_training_exception_fails_the_run_with_error_and_traceback(lab: Lab) -> None:
    # A text task whose corpus is gone by the time the worker starts: train() raises in the
    # child process, and its error and traceback are recorded by the worker.
    cfg = factories.tiny_config(device="cpu")
    task = dataclasses.replace(cfg.task, name="text", vocab_size=256, path="/nonexistent.txt")
    run = do_submit_run(
        project=lab.project,
        cfg=dataclasses.replace(
            cfg, task=task, model=dataclasses.replace(cfg.model, vocab_size=256)
        ),
        experiment_name="jobs",
        enqueue=False,
        acting_user=lab.alice,
    )

    assert jobs.execute_run(run.pk) == "failed"

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("FileNotFoundError: "), run.error
    assert "/nonexistent.txt" in run.error
    assert "Traceback (most recent call last)" in run.traceback
    assert "make_datasets" in run.traceback
    assert run.finished_at is not None


def test_a_run_that_exhausts_its_memory_limit_fails_and_the_next_run_succeeds(
    lab: Lab, settings: Any
) -> None:
    # The cap counts what training allocates beyond the runtime; 300 MiB holds a tiny run, not
    # a batch of 32 sequences of 2,048 tokens through a 256-wide H3 (≈ 9 GiB estimated).
    settings.H3LAB_RUN_MEMORY_LIMIT_MB = {"cpu": 300}
    tiny = factories.tiny_config(device="cpu", steps=5)
    big = RunConfig.build(
        preset="h3",
        n_layer=2,
        d_model=256,
        task=dataclasses.replace(tiny.task, seq_len=2048),
        train=dataclasses.replace(tiny.train, batch_size=32),
    )
    greedy = do_submit_run(
        project=lab.project, cfg=big, experiment_name="jobs", enqueue=False, acting_user=lab.alice
    )
    normal = do_submit_run(
        project=lab.project, cfg=tiny, experiment_name="jobs", enqueue=False, acting_user=lab.alice
    )

    assert jobs.execute_run(greedy.pk) == "failed"
    assert jobs.execute_run(normal.pk) == "succeeded"

    greedy.refresh_from_db()
    assert greedy.status == RunStatus.FAILED
    assert greedy.error.startswith("run exceeded its memory limit of 300 MiB"), greedy.error
    normal.refresh_from_db()
    assert normal.status == RunStatus.SUCCEEDED


def _stale_running_run(lab: Lab, *, attempt: int) -> Run:
    long_ago = timezone.now() - timedelta(minutes=10)
    return factories.make_run(
        lab.project,
        status=RunStatus.RUNNING,
        attempt=attempt,
        claim=uuid.uuid4(),
        heartbeat_at=long_ago,
        started_at=long_ago,
    )


def test_the_reaper_requeues_a_stale_run_below_the_attempt_cap(lab: Lab) -> None:
    run = _stale_running_run(lab, attempt=1)
    fresh = factories.make_run(
        lab.project, status=RunStatus.RUNNING, attempt=1, claim=uuid.uuid4(),
        heartbeat_at=timezone.now(),
    )  # fmt: skip

    reaped = do_reap_stale_runs(timeout_s=30, max_attempts=3)

    assert [(r.run_id, r.outcome) for r in reaped] == [(run.pk, "requeued")]
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert run.claim is None
    assert run.celery_task_id != "", "the requeued job was sent to the broker"
    fresh.refresh_from_db()
    assert fresh.status == RunStatus.RUNNING


def test_the_reaper_fails_a_stale_run_at_the_attempt_cap_with_a_clear_message(lab: Lab) -> None:
    run = _stale_running_run(lab, attempt=3)

    reaped = do_reap_stale_runs(timeout_s=30, max_attempts=3)

    assert [(r.run_id, r.outcome) for r in reaped] == [(run.pk, "failed")]
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("worker lost: no heartbeat since")
    assert "after 3 attempt(s)" in run.error
    assert run.finished_at is not None


class WorkerDied(BaseException):
    """Stands in for SIGKILL: not an Exception, so execute_run cannot record it."""


def test_a_requeued_run_resumes_from_its_checkpoint(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = submit(lab, steps=40, checkpoint_every=10, eval_every=10)
    first_steps: dict[int, int] = {}
    real_progress = jobs.ProgressRecorder.progress

    def progress(self: jobs.ProgressRecorder, p: Any) -> None:
        attempt = Run.objects.get(pk=self.run_id).attempt
        first_steps.setdefault(attempt, p.step)
        if attempt == 1 and p.step >= 20:
            raise WorkerDied
        real_progress(self, p)

    monkeypatch.setattr(jobs.ProgressRecorder, "progress", progress)
    with pytest.raises(WorkerDied):
        jobs.execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING, "a dead worker leaves its run running…"
    assert (run_workdir(run.pk) / "checkpoint").is_dir()

    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert [r.outcome for r in do_reap_stale_runs(timeout_s=30)] == ["requeued"]
    assert jobs.execute_run(run.pk) == "succeeded"

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    assert run.attempt == 2
    assert first_steps[2] > 10, f"attempt 2 started from scratch: {first_steps}"
    log = Artifact.objects.get(run=run, name="train.log")
    assert "resumed from" in b"".join(open_artifact(log)).decode()

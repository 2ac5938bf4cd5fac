"""Faults without processes: what is transient, how it is retried, what the reaper decides, and
how a job ends when the database blinks, stays away, or the worker shuts down.

The trainings here are real (tiny, in a child process, as on a worker); the faults are injected
by making the worker's database writes raise what a lost server raises. The same faults with
real servers and real workers are in ``tests/e2e/test_faults.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import kombu.exceptions
import pytest
from django.db import IntegrityError, InterfaceError, OperationalError
from django.urls import reverse
from django.utils import timezone

from experiments.actions import worker
from experiments.actions.runs import do_cancel_run, do_submit_run
from experiments.actions.worker import do_archive_workdir, do_preempt_run, do_reap_stale_runs
from experiments.models import Artifact, Run, RunStatus
from experiments.storage import open_artifact, run_workdir
from h3lab import jobs
from h3lab.celery import _beat_schedule, app, check_worker_keys
from h3lab.transient import TransientError, backoff_delays, is_transient, retry_transient
from tests import factories
from tests.conftest import Lab, login

# --- classification and retry (no database) ------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        OperationalError("server closed the connection unexpectedly"),
        InterfaceError("connection already closed"),
        kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6379"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError("timed out"),
        TransientError("gave up"),
    ],
)
def test_database_broker_and_network_errors_are_transient(exc: Exception) -> None:
    assert is_transient(exc) is True


@pytest.mark.parametrize(
    "exc",
    [IntegrityError("duplicate key"), ValueError("bad config"), MemoryError(), KeyError("x")],
)
def test_errors_of_the_run_or_the_code_are_not_transient(exc: BaseException) -> None:
    assert is_transient(exc) is False


def test_an_error_raised_from_a_transient_one_is_transient() -> None:
    try:
        try:
            raise OperationalError("terminating connection due to administrator command")
        except OperationalError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as outer:
        assert is_transient(outer) is True


def test_backoff_doubles_is_capped_and_stays_within_the_budget() -> None:
    delays = backoff_delays(20.0, first=0.2, cap=5.0)
    assert delays[:5] == [0.2, 0.4, 0.8, 1.6, 3.2]
    assert max(delays) == 5.0
    assert sum(delays) == pytest.approx(20.0)
    assert backoff_delays(0.0) == []


def test_retry_succeeds_once_the_transient_error_passes() -> None:
    calls = [0]
    slept: list[float] = []

    def flaky() -> str:
        calls[0] += 1
        if calls[0] < 3:
            raise OperationalError("the database system is starting up")
        return "ok"

    assert retry_transient(flaky, budget_s=10, what="t", sleep=slept.append) == "ok"
    assert calls[0] == 3
    assert slept == [0.2, 0.4]


def test_retry_gives_up_after_the_budget_with_a_transient_error() -> None:
    slept: list[float] = []

    def down() -> None:
        raise OperationalError("connection refused")

    with pytest.raises(TransientError) as info:
        retry_transient(down, budget_s=3, what="claim", sleep=slept.append)
    assert sum(slept) == pytest.approx(3)
    assert isinstance(info.value.__cause__, OperationalError)
    assert "claim: still failing after 3s" in str(info.value)


def test_retry_does_not_retry_an_error_of_the_run() -> None:
    calls = [0]

    def broken() -> None:
        calls[0] += 1
        raise ValueError("no such task")

    with pytest.raises(ValueError):
        retry_transient(broken, budget_s=10, what="t", sleep=lambda s: None)
    assert calls[0] == 1


# --- worker start, routing -----------------------------------------------------------------


def test_a_worker_without_a_master_key_refuses_to_start(settings: Any, tmp_path: Any) -> None:
    settings.H3LAB_MASTER_KEYS = ""
    settings.H3LAB_MASTER_KEY_FILE = str(tmp_path / "missing.key")
    settings.H3LAB_MASTER_KEY_AUTOCREATE = False
    with pytest.raises(SystemExit) as info:
        check_worker_keys()
    assert info.value.code != 0


def test_a_worker_with_an_unusable_master_key_refuses_to_start(settings: Any) -> None:
    settings.H3LAB_MASTER_KEYS = "k1:not-base64-of-32-bytes"
    with pytest.raises(SystemExit):
        check_worker_keys()


def test_the_reaper_has_its_own_queue_and_its_ticks_expire() -> None:
    entry = _beat_schedule()["reap-stale-runs"]
    options: Any = entry["options"]
    assert options["queue"] == "control"
    assert 0 < options["expires"] <= float(entry["schedule"])  # type: ignore[arg-type]
    route = app.amqp.router.route({}, "h3lab.jobs.reap_stale_runs")
    assert route["queue"].name == "control"


# --- the progress recorder -----------------------------------------------------------------


class FakeProgress:
    def __init__(self, step: int) -> None:
        self.step, self.total_steps = step, 100
        self.loss, self.accuracy, self.tokens_per_s, self.eta_s, self.lr = 1.0, 0.5, 10.0, 1, 0.1


def test_progress_survives_a_database_blip_without_losing_points(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writes: list[list[tuple[str, int, float]]] = []
    down = [True]

    def record(run_id: int, token: Any, *, fields: Any, points: Any) -> bool:
        if down[0]:
            raise OperationalError("server closed the connection unexpectedly")
        writes.append(list(points))
        return True

    monkeypatch.setattr(worker, "do_record_progress", record)
    clock = [0.0]
    recorder = jobs.ProgressRecorder(1, uuid.uuid4(), retry_budget_s=5, clock=lambda: clock[0])
    recorder.progress(FakeProgress(1))
    clock[0] = 1.0
    recorder.progress(FakeProgress(2))
    assert recorder.unreachable is False and writes == []
    down[0] = False
    clock[0] = 2.0
    recorder.progress(FakeProgress(3))

    steps = sorted({step for _, step, _ in writes[0]})
    assert steps == [1, 2, 3], "the points of the failed writes came with the next one"
    assert recorder.unreachable is False


def test_progress_gives_up_after_the_budget_and_asks_training_to_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def record(*args: Any, **kwargs: Any) -> bool:
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(worker, "do_record_progress", record)
    clock = [0.0]
    recorder = jobs.ProgressRecorder(1, uuid.uuid4(), retry_budget_s=5, clock=lambda: clock[0])
    recorder.progress(FakeProgress(1))
    clock[0] = 4.0
    recorder.progress(FakeProgress(2))
    assert recorder.unreachable is False
    clock[0] = 6.0
    recorder.progress(FakeProgress(3))
    assert recorder.unreachable is True


def test_a_programming_error_in_a_progress_write_is_not_swallowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def record(*args: Any, **kwargs: Any) -> bool:
        raise IntegrityError("violates check constraint")

    monkeypatch.setattr(worker, "do_record_progress", record)
    recorder = jobs.ProgressRecorder(1, uuid.uuid4())
    with pytest.raises(IntegrityError):
        recorder.progress(FakeProgress(1))


# --- reaper decisions (database, no processes) ---------------------------------------------


def _queued(lab: Lab, *, age_s: float, task_id: str = "celery-id", **fields: Any) -> Run:
    return factories.make_run(
        lab.project,
        status=RunStatus.QUEUED,
        created_at=timezone.now() - timedelta(seconds=age_s),
        celery_task_id=task_id,
        **fields,
    )


@pytest.mark.django_db
def test_a_queued_run_whose_message_was_lost_is_resent_whatever_its_task_id(lab: Lab) -> None:
    lost = _queued(lab, age_s=400)
    recent = _queued(lab, age_s=100)

    reaped = do_reap_stale_runs(timeout_s=30, requeue_after_s=300)

    assert [(r.run_id, r.outcome) for r in reaped] == [(lost.pk, "resent")]
    lost.refresh_from_db()
    assert lost.status == RunStatus.QUEUED
    assert lost.resends == 1
    assert lost.dispatched_at is not None
    assert lost.notice.startswith("re-sent to the queue: no worker had started it 400 s")
    recent.refresh_from_db()
    assert recent.resends == 0 and recent.notice == ""


@pytest.mark.django_db
def test_a_resent_run_is_resent_again_only_after_a_doubled_wait(lab: Lab) -> None:
    now = timezone.now()
    once = _queued(lab, age_s=3600, resends=1, dispatched_at=now - timedelta(seconds=400))
    twice = _queued(lab, age_s=3600, resends=2, dispatched_at=now - timedelta(seconds=1300))
    capped = _queued(lab, age_s=9999, resends=9, dispatched_at=now - timedelta(seconds=2500))

    reaped = {r.run_id for r in do_reap_stale_runs(timeout_s=30, requeue_after_s=300)}

    assert once.pk not in reaped, "waits 2 x 300 s after its first re-send"
    assert twice.pk in reaped, "waits 4 x 300 s after its second"
    assert capped.pk in reaped, "never more than 8 x 300 s"


@pytest.mark.django_db
def test_a_run_that_never_reached_the_broker_is_sent_after_the_heartbeat_timeout(
    lab: Lab,
) -> None:
    unsent = _queued(lab, age_s=40, task_id="")

    assert [r.outcome for r in do_reap_stale_runs(timeout_s=30, requeue_after_s=300)] == ["resent"]
    unsent.refresh_from_db()
    assert "broker was unreachable" in unsent.notice
    # Sent again only after another timeout: the reaper does not flood a broker that is down.
    assert do_reap_stale_runs(timeout_s=30, requeue_after_s=300) == []


@pytest.mark.django_db
def test_a_dead_workers_run_is_requeued_with_a_notice_naming_the_worker(lab: Lab) -> None:
    long_ago = timezone.now() - timedelta(minutes=2)
    run = factories.make_run(
        lab.project, status=RunStatus.RUNNING, attempt=1, claim=uuid.uuid4(),
        heartbeat_at=long_ago, worker_host="gpu@node7",
    )  # fmt: skip

    assert [r.outcome for r in do_reap_stale_runs(timeout_s=30)] == ["requeued"]

    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert run.notice.startswith("requeued after gpu@node7 stopped responding")
    assert run.notice_at is not None and run.dispatched_at == run.notice_at


@pytest.mark.django_db
def test_a_preempted_run_goes_back_to_the_queue_without_using_an_attempt(lab: Lab) -> None:
    token = uuid.uuid4()
    run = factories.make_run(
        lab.project, status=RunStatus.RUNNING, attempt=2, claim=token, heartbeat_at=timezone.now()
    )

    assert do_preempt_run(run.pk, uuid.uuid4(), reason="shutdown") is False, "not our claim"
    assert do_preempt_run(run.pk, token, reason="the worker was shutting down") is True

    run.refresh_from_db()
    assert (run.status, run.attempt, run.preemptions) == (RunStatus.QUEUED, 1, 1)
    assert run.claim is None
    assert run.notice == "requeued: the worker was shutting down"


@pytest.mark.django_db
def test_the_run_page_says_why_a_run_was_requeued(lab: Lab) -> None:
    run = _queued(lab, age_s=400)
    do_reap_stale_runs(timeout_s=30, requeue_after_s=300)

    page = login(lab.alice).get(reverse("run", args=[run.pk])).content.decode()

    assert "Re-sent to the queue: no worker had started it 400 s after it was sent" in page


# --- jobs under faults (real tiny trainings) -----------------------------------------------


def submit(lab: Lab, **train_kw: Any) -> Run:
    return do_submit_run(
        project=lab.project,
        cfg=factories.tiny_config(device="cpu", **train_kw),
        experiment_name="faults",
        enqueue=False,
        acting_user=lab.alice,
    )


@pytest.fixture
def flaky_progress(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Progress writes raise OperationalError while ``state["down"](step, n)`` is true (``n``:
    how many writes were tried before this one)."""
    state: dict[str, Any] = {"down": lambda step, n: False, "failed_points": set(), "n": 0}
    real = worker.do_record_progress

    def record(run_id: int, token: Any, *, fields: Any, points: Any = ()) -> bool:
        state["n"] += 1
        if state["down"](fields.get("step", 0), state["n"] - 1):
            state["failed_points"] |= {(name, step) for name, step, _ in points}
            raise OperationalError("terminating connection due to administrator command")
        return real(run_id, token, fields=fields, points=points)

    monkeypatch.setattr(worker, "do_record_progress", record)
    yield state


@pytest.mark.django_db(transaction=True)
def test_a_database_blip_mid_run_does_not_fail_the_run(
    lab: Lab, flaky_progress: dict[str, Any]
) -> None:
    run = submit(lab, steps=30)
    flaky_progress["down"] = lambda step, n: n in (1, 2)  # the 2nd and 3rd writes fail

    assert jobs.execute_run(run.pk) == "succeeded"

    run.refresh_from_db()
    failed_points = flaky_progress["failed_points"]
    assert failed_points, "the fault was injected"
    assert run.status == RunStatus.SUCCEEDED and run.attempt == 1
    points = set(run.metrics.values_list("name", "step"))
    assert failed_points <= points, "points whose write failed during the blip were kept"


@pytest.mark.django_db(transaction=True)
def test_a_database_away_past_the_budget_leaves_the_run_to_the_reaper_which_resumes_it(
    lab: Lab, flaky_progress: dict[str, Any], settings: Any
) -> None:
    settings.H3LAB_TRANSIENT_RETRY_S = 0.3
    run = submit(lab, steps=100, checkpoint_every=10, eval_every=50)
    flaky_progress["down"] = lambda step, n: step >= 20

    assert jobs.execute_run(run.pk) == "interrupted"
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING, "not failed by the worker"
    assert (run_workdir(run.pk) / "checkpoint").is_dir(), "the checkpoint is kept"

    flaky_progress["down"] = lambda step, n: False
    Run.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    assert [r.outcome for r in do_reap_stale_runs(timeout_s=30)] == ["requeued"]
    assert jobs.execute_run(run.pk) == "succeeded"

    run.refresh_from_db()
    assert run.attempt == 2
    log = Artifact.objects.get(run=run, name="train.log")
    assert "resumed from" in b"".join(open_artifact(log)).decode()


@pytest.mark.django_db(transaction=True)
def test_a_warm_shutdown_requeues_the_run_without_using_an_attempt(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = submit(lab, steps=100, checkpoint_every=10, eval_every=50)
    real_progress = jobs.ProgressRecorder.progress

    def progress(self: jobs.ProgressRecorder, p: Any) -> None:
        if p.step >= 20:
            jobs.SHUTTING_DOWN.set()  # as the worker_shutting_down signal does on SIGTERM
        real_progress(self, p)

    monkeypatch.setattr(jobs.ProgressRecorder, "progress", progress)
    try:
        assert jobs.execute_run(run.pk) == "requeued"
    finally:
        jobs.SHUTTING_DOWN.clear()
    run.refresh_from_db()
    assert (run.status, run.attempt, run.preemptions) == (RunStatus.QUEUED, 0, 1)
    assert (run_workdir(run.pk) / "checkpoint").is_dir()

    monkeypatch.setattr(jobs.ProgressRecorder, "progress", real_progress)
    assert jobs.execute_run(run.pk) == "succeeded"
    run.refresh_from_db()
    assert (run.attempt, run.preemptions) == (1, 1)


@pytest.mark.django_db(transaction=True)
def test_a_failed_runs_folder_is_removed_and_its_log_kept_encrypted(lab: Lab) -> None:
    from h3lab.train import train

    run = submit(lab, steps=10)
    # A checkpoint of another model in its folder: training raises (a reason of its own)
    # after writing to the log.
    other = factories.tiny_config(device="cpu", steps=5)
    other = type(other).build(
        preset="h3", n_layer=1, d_model=32, d_state=8, task=other.task, train=other.train
    )
    train(other, run_workdir(run.pk))

    assert jobs.execute_run(run.pk) == "failed"

    run.refresh_from_db()
    assert run.status == RunStatus.FAILED, run.error
    assert not run_workdir(run.pk).exists(), "no plaintext checkpoint or log left on disk"
    log = Artifact.objects.get(run=run, name="train.log")
    assert log.encrypted is True
    assert b"step" in b"".join(open_artifact(log))


@pytest.mark.django_db(transaction=True)
def test_a_cancelled_runs_folder_is_removed_with_its_log_kept(lab: Lab) -> None:
    run = submit(lab)
    workdir = run_workdir(run.pk)
    (workdir / "checkpoint").mkdir(parents=True)
    (workdir / "checkpoint" / "model.safetensors").write_bytes(b"plaintext weights")
    (workdir / "train.log").write_text("step 1 loss 2.0\n")
    assert do_archive_workdir(run.pk, workdir) is False, "a queued run keeps its folder"

    do_cancel_run(run, acting_user=lab.alice)
    assert do_archive_workdir(run.pk, workdir) is True

    assert not workdir.exists()
    log = Artifact.objects.get(run=run, name="train.log")
    assert b"".join(open_artifact(log)) == b"step 1 loss 2.0\n"


@pytest.mark.django_db
def test_the_reaper_sweeps_folders_of_final_runs_and_keeps_those_that_resume(lab: Lab) -> None:
    from experiments.actions.worker import do_sweep_final_workdirs

    long_ago = timezone.now() - timedelta(minutes=5)
    failed = factories.make_run(lab.project, status=RunStatus.FAILED, finished_at=long_ago)
    just_cancelled = factories.make_run(
        lab.project, status=RunStatus.CANCELLED, finished_at=timezone.now()
    )
    queued = factories.make_run(lab.project, status=RunStatus.QUEUED)
    for run in (failed, just_cancelled, queued):
        run_workdir(run.pk).mkdir(parents=True)
        (run_workdir(run.pk) / "train.log").write_text(f"log of {run.pk}\n")
    orphan = run_workdir(failed.pk + 1000)
    orphan.mkdir(parents=True)

    swept = do_sweep_final_workdirs(run_workdir(0).parent, older_than_s=30)

    assert swept == [failed.pk]
    assert not run_workdir(failed.pk).exists()
    assert orphan.is_dir(), "a folder the database does not know is not ours to delete"
    assert run_workdir(just_cancelled.pk).is_dir(), "its worker may still be stopping"
    assert run_workdir(queued.pk).is_dir(), "a queued run resumes from its folder"
    log = Artifact.objects.get(run=failed, name="train.log")
    assert b"".join(open_artifact(log)) == f"log of {failed.pk}\n".encode()


def test_a_reaper_slower_than_the_heartbeat_timeout_is_flagged(settings: Any) -> None:
    from h3lab.checks import check_reaper_timing

    assert check_reaper_timing(None) == []
    settings.H3LAB_REAPER_INTERVAL_S = settings.H3LAB_HEARTBEAT_TIMEOUT_S + 1
    settings.H3LAB_HEARTBEAT_S = settings.H3LAB_HEARTBEAT_TIMEOUT_S / 2
    assert [w.id for w in check_reaper_timing(None)] == ["h3lab.W020", "h3lab.W021"]


@pytest.mark.django_db
def test_the_run_page_says_when_a_running_runs_worker_went_silent(lab: Lab) -> None:
    silent = factories.make_run(
        lab.project, status=RunStatus.RUNNING, attempt=1, claim=uuid.uuid4(),
        heartbeat_at=timezone.now() - timedelta(minutes=2), worker_host="gpu@node7",
    )  # fmt: skip
    alive = factories.make_run(
        lab.project, status=RunStatus.RUNNING, attempt=1, claim=uuid.uuid4(),
        heartbeat_at=timezone.now(), worker_host="cpu@node1",
    )  # fmt: skip
    client = login(lab.alice)

    page = client.get(reverse("run", args=[silent.pk])).content.decode()
    assert "No heartbeat from gpu@node7 since" in page
    assert "No heartbeat" not in client.get(reverse("run", args=[alive.pk])).content.decode()


@pytest.mark.django_db
def test_a_worker_in_warm_shutdown_hands_new_messages_back_unclaimed(lab: Lab) -> None:
    from celery.exceptions import Reject

    run = submit(lab)
    jobs.SHUTTING_DOWN.set()
    try:
        with pytest.raises(Reject) as info:
            jobs.run_training(run.pk)
    finally:
        jobs.SHUTTING_DOWN.clear()

    assert getattr(info.value, "requeue", None) is True  # back to the broker, not dropped
    run.refresh_from_db()
    assert (run.status, run.attempt) == (RunStatus.QUEUED, 0)

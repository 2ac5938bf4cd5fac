"""Faults with real servers and real workers (issue 12, items 1 and 2, and the missing key).

PostgreSQL and Redis faults use private servers (``tests/servers.py``) that these tests stop and
restart; the shared ones are never touched. Worker and reaper settings are shortened by
environment (heartbeat 1 s, timeouts of a few seconds) so each test takes well under a minute
on an idle machine.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from experiments.actions.runs import RUN_TASK, do_cancel_run, do_submit_run
from experiments.models import Artifact, Run, RunStatus
from experiments.storage import open_artifact, run_workdir
from tests import factories
from tests.conftest import Lab
from tests.e2e.conftest import Worker, run_row, wait_for
from tests.servers import PrivatePostgres, PrivateRedis, private_pg, private_redis, use_database

__all__ = ["private_pg", "private_redis"]

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

FINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
REAPER = {"H3LAB_REAPER_INTERVAL_S": "1", "H3LAB_HEARTBEAT_S": "0.5"}


def finished(pk: int) -> Run | None:
    run = run_row(pk)
    return run if run.status in FINAL else None


def training(pk: int, min_step: int = 40) -> bool:
    run = run_row(pk)
    state = run_workdir(pk) / "checkpoint" / "state.json"
    return run.status == RunStatus.RUNNING and run.step >= min_step and state.is_file()


def submit(project: Any, user: Any, *, queue: str = "cpu", enqueue: bool = True, **kw: Any) -> Run:
    cfg = factories.tiny_config(device="cpu", **kw)
    return do_submit_run(
        project=project, cfg=cfg, experiment_name="faults", queue=queue, enqueue=enqueue,
        acting_user=user,
    )  # fmt: skip


def log_text(run: Run) -> str:
    return b"".join(open_artifact(Artifact.objects.get(run=run, name="train.log"))).decode()


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture
def private_db(private_pg: PrivatePostgres, lab: Lab) -> Iterator[tuple[str, Any, Any]]:
    """A migrated database on the private server, used by this process for the test; yields
    its URL for the workers, a project and its member."""
    name = private_pg.migrated_database()
    with use_database(private_pg.settings_dict(name)):
        user = factories.make_user("pat")
        project = factories.make_project("faults", members=[user])
        yield private_pg.url(name), project, user


def test_a_postgres_restart_mid_run_does_not_fail_the_run(
    private_pg: PrivatePostgres, private_db: tuple[str, Any, Any], start_worker: Any
) -> None:
    url, project, user = private_db
    start_worker(env={"DATABASE_URL": url})
    run = submit(project, user, steps=600, checkpoint_every=20, eval_every=200)
    wait_for(lambda: training(run.pk), timeout=180, what="the run to be training")

    private_pg.restart(downtime=0.5)
    from django.db import connection

    connection.close()  # ours died with the server too
    run = wait_for(lambda: finished(run.pk), timeout=240, interval=0.5, what="the run to end")

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempt == 1, "the restart cost no attempt"
    assert run.step == run.total_steps


def test_terminated_database_connections_mid_run_do_not_fail_the_run(
    private_pg: PrivatePostgres, private_db: tuple[str, Any, Any], start_worker: Any
) -> None:
    url, project, user = private_db
    start_worker(env={"DATABASE_URL": url})
    run = submit(project, user, steps=600, checkpoint_every=20, eval_every=200)
    wait_for(lambda: training(run.pk), timeout=180, what="the run to be training")

    from django.db import connection

    dbname = connection.settings_dict["NAME"]
    connection.close()
    assert private_pg.terminate_backends(dbname) >= 1, "the worker's connections were cut"
    run = wait_for(lambda: finished(run.pk), timeout=240, interval=0.5, what="the run to end")

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempt == 1


def test_a_database_outage_past_the_retry_budget_resumes_the_run_from_its_checkpoint(
    private_pg: PrivatePostgres, private_db: tuple[str, Any, Any], start_worker: Any
) -> None:
    url, project, user = private_db
    start_worker(
        beat=True,
        env={
            "DATABASE_URL": url,
            "H3LAB_TRANSIENT_RETRY_S": "2",
            "H3LAB_HEARTBEAT_TIMEOUT_S": "4",
            **REAPER,
        },
    )
    run = submit(project, user, steps=2000, checkpoint_every=20, eval_every=1000)
    wait_for(lambda: training(run.pk), timeout=180, what="the run to be training")

    private_pg.restart(downtime=6)
    from django.db import connection

    connection.close()
    run = wait_for(lambda: finished(run.pk), timeout=400, interval=0.5, what="the run to end")

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.attempt == 2, "the worker gave the attempt up; the reaper requeued it"
    assert run.notice.startswith("requeued after"), run.notice
    assert "resumed from" in log_text(run)


# --- Redis ---------------------------------------------------------------------------------


def test_a_run_whose_message_redis_lost_is_resent_and_runs(
    lab: Lab, private_redis: PrivateRedis, start_worker: Any
) -> None:
    run = submit(lab.project, lab.alice, enqueue=False, steps=20)
    sender = Celery("sender", broker=private_redis.url(0))
    message = sender.send_task(RUN_TASK, args=[run.pk], queue="cpu")
    Run.objects.filter(pk=run.pk).update(celery_task_id=message.id)
    sender.close()

    private_redis.restart()  # empty: the message is gone
    start_worker(
        beat=True,
        env={
            "CELERY_BROKER_URL": private_redis.url(0),
            "CELERY_RESULT_BACKEND": private_redis.url(1),
            "H3LAB_BROKER_PREFIX": "",
            "H3LAB_REQUEUE_AFTER_S": "3",
            **REAPER,
        },
    )
    run = wait_for(lambda: finished(run.pk), timeout=180, interval=0.5, what="the run to end")

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.resends >= 1
    assert run.notice.startswith("re-sent to the queue: no worker had started it"), run.notice


# --- workers -------------------------------------------------------------------------------


def test_a_killed_gpu_workers_run_is_requeued_within_twice_the_heartbeat_timeout(
    lab: Lab, start_worker: Any
) -> None:
    timeout_s = 5.0
    start_worker(queues="cpu")
    gpu: Worker = start_worker(queues="gpu")
    start_worker(
        beat=True, queues="control", env={"H3LAB_HEARTBEAT_TIMEOUT_S": str(timeout_s), **REAPER}
    )
    busy = submit(lab.project, lab.alice, steps=20_000, eval_every=10_000, checkpoint_every=50)
    run = submit(lab.project, lab.alice, queue="gpu", steps=20_000, checkpoint_every=50)
    wait_for(lambda: training(busy.pk, 1) and training(run.pk, 1), timeout=240, what="both")

    gpu.kill()
    killed_at = time.monotonic()
    wait_for(
        lambda: run_row(run.pk).status == RunStatus.QUEUED,
        timeout=4 * timeout_s,
        interval=0.2,
        what="the dead worker's run to be requeued",
    )
    took = time.monotonic() - killed_at

    assert took <= 2 * timeout_s, f"requeued {took:.1f}s after the kill"
    assert run_row(busy.pk).status == RunStatus.RUNNING, "the reaper did not wait for training"
    assert "stopped responding" in run_row(run.pk).notice
    do_cancel_run(run_row(busy.pk), acting_user=lab.alice)
    do_cancel_run(run_row(run.pk), acting_user=lab.alice)


@pytest.mark.parametrize("target", ["worker", "group"])
def test_a_sigterm_mid_run_requeues_it_without_using_an_attempt_and_it_finishes_later(
    lab: Lab, start_worker: Any, target: str
) -> None:
    first: Worker = start_worker()
    run = submit(lab.project, lab.alice, steps=300, checkpoint_every=20, eval_every=150)
    wait_for(lambda: training(run.pk), timeout=180, what="the run to be training")

    # "worker": only the Celery process, as `docker stop` signals PID 1; "group": the worker
    # and its training child, as Ctrl-C or a supervisor stopping the process group does.
    if target == "worker":
        os.kill(first.proc.pid, signal.SIGTERM)
    else:
        os.killpg(first.proc.pid, signal.SIGTERM)
    code = first.proc.wait(timeout=60)

    assert code == 0, first.log()[-3000:]
    queued = run_row(run.pk)
    assert (queued.status, queued.attempt, queued.preemptions) == (RunStatus.QUEUED, 0, 1)
    assert queued.notice.startswith("requeued: the worker was shutting down"), queued.notice
    assert run_workdir(run.pk).is_dir(), "its checkpoint stays for the resume"

    start_worker()
    run = wait_for(lambda: finished(run.pk), timeout=240, interval=0.5, what="the run to end")
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert (run.attempt, run.preemptions) == (1, 1)
    assert "resumed from" in log_text(run)


def test_a_worker_without_a_master_key_refuses_to_start_and_takes_no_job(
    lab: Lab, start_worker: Any, tmp_path: Path
) -> None:
    run = submit(lab.project, lab.alice, steps=5)
    worker: Worker = start_worker(
        env={"H3LAB_MASTER_KEYS": "", "H3LAB_MASTER_KEY_FILE": str(tmp_path / "no.key")},
        wait_ready=False,
    )

    code = worker.proc.wait(timeout=120)

    assert code != 0
    assert "refuses to start: no usable master key" in worker.log()
    assert "ready." not in worker.log()
    run = run_row(run.pk)
    assert (run.status, run.attempt) == (RunStatus.QUEUED, 0)

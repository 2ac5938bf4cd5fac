"""End to end: real training jobs through a real broker and real ``celery worker`` processes.

Timeouts are generous and every wait polls the database: these run on loaded 2-core machines.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from experiments.actions.runs import check_submit_run, do_cancel_run, do_submit_run
from experiments.models import Artifact, MetricPoint, Run, RunStatus
from experiments.storage import run_workdir
from h3lab.config import RunConfig
from tests import factories
from tests.conftest import Lab
from tests.e2e.conftest import Worker, run_row, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

FINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


def submit(lab: Lab, **train_kw: Any) -> Run:
    """Submit through the action the web form uses: the job is sent after commit."""
    cfg = factories.tiny_config(device="cpu", **train_kw)
    return check_submit_run(
        project=lab.project, config=cfg.to_dict(), experiment_name="e2e", acting_user=lab.alice
    )


def finished(pk: int) -> Run | None:
    run = run_row(pk)
    return run if run.status in FINAL else None


def test_a_tiny_job_runs_to_completion_on_a_real_worker(lab: Lab, start_worker: Any) -> None:
    start_worker()
    run = submit(lab)

    run = wait_for(lambda: finished(run.pk), timeout=180, what="the run to finish")

    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.step == run.total_steps
    assert run.celery_task_id != ""
    assert MetricPoint.objects.filter(run=run, name="train_loss").exists()
    assert MetricPoint.objects.filter(run=run, name="test_accuracy").exists()
    assert Artifact.objects.filter(run=run, name="model.safetensors").exists()


def test_cancelling_a_running_job_stops_the_worker_within_seconds(
    lab: Lab, start_worker: Any
) -> None:
    worker: Worker = start_worker()
    run = submit(lab, steps=20_000, eval_every=10_000, checkpoint_every=10_000)
    wait_for(
        lambda: run_row(run.pk).status == RunStatus.RUNNING and run_row(run.pk).step > 0,
        timeout=180,
        what="the run to be training",
    )

    assert do_cancel_run(run_row(run.pk), acting_user=lab.alice) is True
    cancelled_at = time.monotonic()
    # The worker really stops: its task returns "stopped" (the training loop saw should_stop).
    wait_for(lambda: "'stopped'" in worker.log(), timeout=60, what="the worker to stop the job")
    stopped_after = time.monotonic() - cancelled_at
    step_when_stopped = run_row(run.pk).step

    assert stopped_after < 15, f"took {stopped_after:.1f}s to stop"
    time.sleep(3)  # the one fixed wait: prove nothing writes to the row any more
    run = run_row(run.pk)
    assert run.status == RunStatus.CANCELLED
    assert run.step == step_when_stopped
    assert run.step < run.total_steps
    assert worker.alive(), "the worker survives and can take the next job"
    assert not run_workdir(run.pk).exists(), "a cancelled run's checkpoint is not kept"


def test_a_run_whose_worker_is_killed_is_resumed_by_another(lab: Lab, start_worker: Any) -> None:
    first: Worker = start_worker()
    run = submit(lab, steps=400, eval_every=100, checkpoint_every=20)
    state = run_workdir(run.pk) / "checkpoint" / "state.json"
    wait_for(
        lambda: state.is_file() and run_row(run.pk).step >= 40,
        timeout=240,
        what="a checkpoint",
    )
    first.kill()
    assert run_row(run.pk).status == RunStatus.RUNNING, "nobody has noticed yet"

    # A second worker with the reaper (beat) and a short heartbeat timeout picks it up.
    start_worker(
        beat=True,
        env={
            "H3LAB_HEARTBEAT_TIMEOUT_S": "6",
            "H3LAB_REAPER_INTERVAL_S": "1",
            "H3LAB_HEARTBEAT_S": "0.5",
        },
    )
    run = wait_for(lambda: finished(run.pk), timeout=400, interval=0.5, what="the run to end")

    if run.status == RunStatus.FAILED:  # allowed, but only with a clear reason
        assert run.error.startswith("worker lost"), run.error
    else:
        assert run.status == RunStatus.SUCCEEDED, run.error
        assert run.attempt == 2
        log = Artifact.objects.get(run=run, name="train.log")
        from experiments.storage import open_artifact

        text = b"".join(open_artifact(log)).decode()  # stored encrypted
        assert "resumed from" in text, text[-2000:]


def test_a_run_past_its_memory_limit_fails_and_the_worker_takes_the_next_job(
    lab: Lab, start_worker: Any
) -> None:
    worker: Worker = start_worker(env={"H3LAB_RUN_MEMORY_LIMIT_MB": "300"})
    tiny = factories.tiny_config(device="cpu", steps=5)
    # ≈ 9 GiB estimated: the limits would refuse it at submission, so it goes in directly, as
    # a run that underestimated itself would.
    greedy_cfg = RunConfig.build(
        preset="h3",
        n_layer=2,
        d_model=256,
        task=dataclasses.replace(tiny.task, seq_len=2048),
        train=dataclasses.replace(tiny.train, batch_size=32),
    )
    greedy = do_submit_run(
        project=lab.project, cfg=greedy_cfg, experiment_name="e2e", acting_user=lab.alice
    )
    normal = submit(lab, steps=5)

    greedy = wait_for(lambda: finished(greedy.pk), timeout=240, what="the greedy run to end")
    normal = wait_for(lambda: finished(normal.pk), timeout=240, what="the next run to end")

    assert greedy.status == RunStatus.FAILED
    assert greedy.error.startswith("run exceeded its memory limit of 300 MiB"), greedy.error
    assert normal.status == RunStatus.SUCCEEDED, normal.error
    assert worker.alive()

"""Runs from the user's side: submission, enqueueing and cancellation."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from experiments.dispatch import send_job
from experiments.models import (
    Experiment,
    Project,
    Run,
    RunStatus,
)
from experiments.runconfig import resource_errors
from experiments.signals import announce, is_user
from experiments.users import ActingUser
from h3lab.config import ConfigError, RunConfig

log = logging.getLogger(__name__)


RUN_TASK = "h3lab.jobs.run_training"


def check_submit_run(
    *,
    project: Project,
    config: dict[str, Any],
    experiment_name: str = "default",
    name: str = "",
    queue: str = "cpu",
    rerun_of: Run | None = None,
    enqueue: bool = True,
    acting_user: ActingUser,
) -> Run:
    """Validate ``config`` against :class:`h3lab.config.RunConfig`, the limits of ``queue``
    (:func:`experiments.runconfig.resource_errors`) and the project's backlog, then submit the
    run. Raises ConfigError naming every bad field (``project`` for the backlog)."""
    cfg = RunConfig.from_dict(config)
    errors = resource_errors(cfg, queue)
    if errors:
        raise ConfigError(errors)
    with transaction.atomic():
        # Lock the project so concurrent submissions count each other (PostgreSQL; SQLite
        # serialises writers anyway).
        Project.objects.select_for_update().filter(pk=project.pk).exists()
        backlog_error = _backlog_error(project)
        if backlog_error:
            raise ConfigError({"project": backlog_error})
        return do_submit_run(
            project=project,
            cfg=cfg,
            experiment_name=experiment_name or "default",
            name=name,
            queue=queue,
            rerun_of=rerun_of,
            enqueue=enqueue,
            acting_user=acting_user,
        )


def _backlog_error(project: Project) -> str:
    """Why ``project`` may not queue another run now ('' if it may): at most
    ``H3LAB_MAX_QUEUED_RUNS_PER_PROJECT`` waiting and ``H3LAB_MAX_RUNNING_RUNS_PER_PROJECT``
    training, so that one project cannot take every worker or flood the broker."""
    runs = Run.objects.filter(project=project)
    queued = runs.filter(status=RunStatus.QUEUED).count()
    if queued >= settings.H3LAB_MAX_QUEUED_RUNS_PER_PROJECT:
        return (
            f"{project.name} already has {queued} queued runs, the most a project may have; "
            "wait for some to start or cancel some"
        )
    running = runs.filter(status=RunStatus.RUNNING).count()
    if running >= settings.H3LAB_MAX_RUNNING_RUNS_PER_PROJECT:
        return (
            f"{project.name} already has {running} runs training, the most a project may have; "
            "wait for one to finish or cancel one"
        )
    return ""


def do_submit_run(
    *,
    project: Project,
    cfg: RunConfig,
    experiment_name: str,
    name: str = "",
    queue: str = "cpu",
    rerun_of: Run | None = None,
    enqueue: bool = True,
    acting_user: ActingUser,
) -> Run:
    """Create the run (queued) and send its job after commit. ``enqueue=False`` leaves the
    job to the caller, which runs :func:`h3lab.jobs.execute_run` itself (the demo loader)."""
    with transaction.atomic():
        experiment, _ = Experiment.objects.get_or_create(
            project=project,
            name=experiment_name,
            defaults={"created_by": acting_user if is_user(acting_user) else None},
        )
        run = Run.objects.create(
            experiment=experiment,
            project=project,
            name=name,
            created_by=acting_user if is_user(acting_user) else None,
            config=cfg.to_dict(),
            preset=cfg.preset,
            task=cfg.task.name,
            queue=queue,
            total_steps=cfg.train.steps,
            rerun_of=rerun_of,
        )
        announce(acting_user, "run.submit", run, new={"config": run.config, "queue": queue})
        if enqueue:
            enqueue_run(run)
    return run


def enqueue_run(run: Run) -> None:
    """Send the run's job once the transaction that created or requeued it commits.

    The send is bounded (:func:`experiments.dispatch.send_job`): when the broker is down or
    hung the run stays queued with no task id (``run.queue_unreachable``) and the reaper sends
    it again later. On success the task id is stored and set on ``run`` too, so the caller's
    response says whether the job reached the queue."""
    run_id, queue = run.pk, run.queue

    def send() -> None:
        task_id = send_job(RUN_TASK, [run_id], queue=queue)
        if task_id is None:
            return
        Run.objects.filter(pk=run_id).update(celery_task_id=task_id)
        run.celery_task_id = task_id

    transaction.on_commit(send)


def do_cancel_run(run: Run, *, reason: str = "", acting_user: ActingUser) -> bool:
    """Cancel a queued or running run. The worker notices within a heartbeat and stops; its
    later writes are conditional on the run still running, so it can never flip back. The
    reason is kept in the audit entry."""
    with transaction.atomic():
        now = timezone.now()
        changed = Run.objects.filter(pk=run.pk, status__in=(RunStatus.QUEUED, RunStatus.RUNNING))
        old_status = run.status
        n = changed.update(status=RunStatus.CANCELLED, finished_at=now, eta_s=None)
        if n:
            old = {"status": old_status}
            new = {"status": RunStatus.CANCELLED.value, "reason": reason[:300]}
            announce(acting_user, "run.cancel", run, old=old, new=new)
    run.refresh_from_db()
    return bool(n)

"""Runs from the user's side: submission, enqueueing and cancellation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from experiments.dispatch import send_job
from experiments.models import (
    Artifact,
    Experiment,
    Project,
    Run,
    RunKind,
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
        # serialises writers anyway). NO KEY UPDATE: it excludes other submitters but not a
        # worker's audit row referencing the project (FOR KEY SHARE), which a plain FOR UPDATE
        # would, deadlocking with that worker over the audit head.
        Project.objects.select_for_update(no_key=True).filter(pk=project.pk).exists()
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
        run = create_run_row(
            project, experiment_name, name, cfg, acting_user, queue=queue, rerun_of=rerun_of
        )
        announce(acting_user, "run.submit", run, new={"config": run.config, "queue": queue})
        if enqueue:
            enqueue_run(run)
    return run


def create_run_row(
    project: Project,
    experiment_name: str,
    name: str,
    cfg: RunConfig,
    acting_user: ActingUser,
    **fields: Any,
) -> Run:
    """The run row of ``cfg`` in its project's experiment (created if new), by
    ``acting_user``; ``fields`` set the rest. Inside the caller's transaction, which also
    announces it."""
    creator = acting_user if is_user(acting_user) else None
    experiment, _ = Experiment.objects.get_or_create(
        project=project, name=experiment_name, defaults={"created_by": creator}
    )
    return Run.objects.create(
        experiment=experiment,
        project=project,
        name=name,
        created_by=creator,
        config=cfg.to_dict(),
        preset=cfg.preset,
        task=cfg.task.name,
        total_steps=cfg.train.steps,
        **fields,
    )


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


# --- analyses: evaluation, probes, interventions on a finished run's checkpoint ---------------

CHECKPOINT_ARTIFACTS: tuple[str, ...] = ("model.safetensors", "config.json")


def analysis_source_errors(source: Run) -> dict[str, str]:
    """Why ``source`` cannot be analysed ('' when it can): it must be a succeeded training run
    whose checkpoint (weights and config) is still stored and readable."""
    if source.kind != RunKind.TRAIN:
        return {"source": "only a training run can be analysed; this run is itself an analysis"}
    if source.status != RunStatus.SUCCEEDED:
        return {"source": f"only a succeeded run can be analysed; this run is {source.status}"}
    stored = set(
        Artifact.objects.filter(
            run=source, name__in=CHECKPOINT_ARTIFACTS, shredded_at__isnull=True
        ).values_list("name", flat=True)
    )
    missing = [name for name in CHECKPOINT_ARTIFACTS if name not in stored]
    if missing:
        return {"source": f"this run's checkpoint is not stored (missing {', '.join(missing)})"}
    return {}


def check_submit_analysis(
    *,
    source: Run,
    kind: str,
    spec: dict[str, Any],
    queue: str | None = None,
    name: str = "",
    acting_user: ActingUser,
) -> Run:
    """Validate an analysis of ``source`` (``kind`` and its options ``spec``, see
    :class:`h3lab.analysis.AnalysisSpec`) and submit it as a run in the source's project and
    experiment, so it is visible to exactly those who see the source. The caller has checked
    that ``acting_user`` may submit runs there (:func:`disclosure.policy.can_submit_run`).
    Raises ValidationError naming every bad field."""
    from h3lab.analysis import AnalysisSpec

    errors = analysis_source_errors(source)
    try:
        parsed = AnalysisSpec.from_dict({**spec, "kind": kind})
    except ConfigError as exc:
        errors.update(exc.errors)
        parsed = None
    if errors or parsed is None:
        raise ValidationError(errors)
    with transaction.atomic():
        Project.objects.select_for_update(no_key=True).filter(pk=source.project_id).exists()
        backlog_error = _backlog_error(source.project)
        if backlog_error:
            raise ValidationError({"project": backlog_error})
        return do_submit_analysis(
            source=source,
            spec=parsed.to_dict(),
            queue=queue or source.queue,
            name=name,
            acting_user=acting_user,
        )


def do_submit_analysis(
    *,
    source: Run,
    spec: dict[str, Any],
    queue: str,
    name: str = "",
    enqueue: bool = True,
    acting_user: ActingUser,
) -> Run:
    """Create the analysis run (queued) of ``source`` and send its job after commit. Its
    config is the source's training config with the spec as ``config["analysis"]``."""
    training_config = {k: v for k, v in source.config.items() if k != "analysis"}
    with transaction.atomic():
        run = Run.objects.create(
            experiment_id=source.experiment_id,
            project_id=source.project_id,
            name=name or f"{spec['kind']} of run {source.pk}",
            created_by=acting_user if is_user(acting_user) else None,
            config={**training_config, "analysis": spec},
            preset=source.preset,
            task=source.task,
            queue=queue,
            total_steps=2,
            kind=spec["kind"],
            source=source,
        )
        announce(
            acting_user,
            "run.submit",
            run,
            new={"kind": run.kind, "source": source.pk, "analysis": spec, "queue": queue},
        )
        if enqueue:
            enqueue_run(run)
    return run


def fetch_source_checkpoint(source_id: int | None, dest: Path) -> None:
    """Decrypt the checkpoint of training run ``source_id`` into ``dest`` (for the worker
    analysing it). Raises ArtifactUnavailable / FileNotFoundError / Artifact.DoesNotExist when
    it cannot be read.

    SECURITY: the plaintext lands only in the analysis run's working folder, which is removed
    when the run ends (as a training run's checkpoints are)."""
    from experiments.storage import open_artifact

    if source_id is None:
        raise ValueError("this analysis has no source run")
    dest.mkdir(parents=True, exist_ok=True)
    for name in CHECKPOINT_ARTIFACTS:
        artifact = Artifact.objects.get(run_id=source_id, name=name)
        partial = dest / f"{name}.part"
        with partial.open("wb") as out:
            for chunk in open_artifact(artifact):
                out.write(chunk)
        partial.replace(dest / name)

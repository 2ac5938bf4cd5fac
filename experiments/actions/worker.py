"""The worker protocol: a run claimed, kept alive, reported on, finished or failed, and
stale runs reaped. Every write is conditional on the worker's claim, so duplicate deliveries,
cancellations and reaped runs are harmless."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from experiments import metrics
from experiments.actions.runs import enqueue_run
from experiments.models import (
    Artifact,
    MetricPoint,
    Run,
    RunStatus,
)
from experiments.signals import announce

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    run_id: int
    token: uuid.UUID
    config: dict[str, Any]
    attempt: int
    queue: str = "cpu"
    kind: str = "train"  # or an analysis of the training run ``source_id`` (RunKind)
    source_id: int | None = None


def do_claim_run(run_id: int, *, host: str, device: str = "", task_id: str = "") -> Claim | None:
    """Move a queued run to running for this worker; None if it is not queued (duplicate
    delivery, cancelled, already claimed)."""
    token = uuid.uuid4()
    now = timezone.now()
    with transaction.atomic():
        n = Run.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
            status=RunStatus.RUNNING,
            claim=token,
            attempt=F("attempt") + 1,
            heartbeat_at=now,
            worker_host=host[:200],
            device=device[:64],
            celery_task_id=task_id[:64],
            error="",
            traceback="",
        )
        if not n:
            return None
        Run.objects.filter(pk=run_id, started_at__isnull=True).update(started_at=now)
        run = Run.objects.get(pk=run_id)
        announce(None, "run.start", run, new={"attempt": run.attempt, "host": host})
    return Claim(
        run_id=run_id,
        token=token,
        config=run.config,
        attempt=run.attempt,
        queue=run.queue,
        kind=run.kind,
        source_id=run.source_id,
    )


def _claimed(run_id: int, token: uuid.UUID) -> Any:
    return Run.objects.filter(pk=run_id, claim=token, status=RunStatus.RUNNING)


def is_cancelled(run_id: int) -> bool:
    return Run.objects.filter(pk=run_id, status=RunStatus.CANCELLED).exists()


def do_record_heartbeat(run_id: int, token: uuid.UUID, **fields: Any) -> bool:
    """Refresh the heartbeat; False means the claim is gone (cancelled or reaped): stop."""
    return bool(_claimed(run_id, token).update(heartbeat_at=timezone.now(), **fields))


def do_record_progress(
    run_id: int,
    token: uuid.UUID,
    *,
    fields: dict[str, Any],
    points: Sequence[tuple[str, int, float]] = (),
) -> bool:
    """Write live progress and metric points; False if the claim is gone."""
    points = metrics.points_to_store(run_id, points, fields)  # raw to a file, bounded rows
    with transaction.atomic():
        n = _claimed(run_id, token).update(heartbeat_at=timezone.now(), **fields)
        if n and points:
            # A resumed attempt replays steps it already logged: keep the first value.
            MetricPoint.objects.bulk_create(
                [MetricPoint(run_id=run_id, name=k, step=s, value=v) for k, s, v in points],
                ignore_conflicts=True,
            )
    return bool(n)


def do_complete_run(
    run_id: int,
    token: uuid.UUID,
    *,
    result: dict[str, Any],
    files: Sequence[tuple[Path, str]] = (),
    fields: dict[str, Any] | None = None,
) -> bool:
    """Store the run's files as artifacts and mark it succeeded (if still claimed)."""
    from experiments.storage import store_file

    run = Run.objects.select_related("project").get(pk=run_id)
    if run.claim != token or run.status != RunStatus.RUNNING:
        return False
    artifacts = [store_file(run, path, name) for path, name in files]
    with transaction.atomic():
        n = _claimed(run_id, token).update(
            status=RunStatus.SUCCEEDED,
            finished_at=timezone.now(),
            result=result,
            eta_s=0,
            **(fields or {}),
        )
        if not n:
            return False
        _replace_artifacts(run_id, artifacts)
        announce(None, "run.succeed", run, new={"result": result})
    return True


def do_fail_run(
    run_id: int,
    token: uuid.UUID,
    *,
    error: str,
    traceback: str = "",
    files: Sequence[tuple[Path, str]] = (),
) -> bool:
    """Mark the run failed for a reason of its own (if still claimed), keeping ``files`` (its
    log) as encrypted artifacts."""
    from experiments.storage import store_file

    run = Run.objects.select_related("project").get(pk=run_id)
    if run.claim != token or run.status != RunStatus.RUNNING:
        return False
    artifacts = [store_file(run, path, name) for path, name in files]
    with transaction.atomic():
        n = _claimed(run_id, token).update(
            status=RunStatus.FAILED,
            finished_at=timezone.now(),
            error=error[:10_000],
            traceback=traceback[-50_000:],
            eta_s=None,
        )
        if n:
            _replace_artifacts(run_id, artifacts)
            announce(None, "run.fail", run, new={"error": error[:500]})
    return bool(n)


def _replace_artifacts(run_id: int, artifacts: Sequence[Artifact]) -> None:
    Artifact.objects.filter(run_id=run_id, name__in=[a.name for a in artifacts]).delete()
    Artifact.objects.bulk_create(artifacts)


def do_preempt_run(run_id: int, token: uuid.UUID, *, reason: str) -> bool:
    """Put a run this worker stopped for reasons not its own (warm shutdown, redeploy) back in
    the queue *without* using an attempt: the claim's attempt is given back and counted in
    ``preemptions``. It resumes from its checkpoint on the next worker. False if the claim is
    gone."""
    now = timezone.now()
    with transaction.atomic():
        n = _claimed(run_id, token).update(
            status=RunStatus.QUEUED,
            claim=None,
            eta_s=None,
            attempt=F("attempt") - 1,
            preemptions=F("preemptions") + 1,
            dispatched_at=now,
            resends=0,
            notice=f"requeued: {reason}"[:500],
            notice_at=now,
        )
        if n:
            run = Run.objects.get(pk=run_id)
            announce(None, "run.preempt", run, new={"reason": reason[:300]})
            enqueue_run(run)
    return bool(n)


def do_archive_workdir(run_id: int, workdir: Path) -> bool:
    """Remove a final run's working folder (plaintext checkpoints and log), keeping its log as
    an encrypted artifact when it has none yet. Only for failed and cancelled runs: a queued
    or running one resumes from the folder. True if the folder was removed."""
    import shutil

    from experiments.presenters import LOG_ARTIFACT
    from experiments.storage import store_file

    run = Run.objects.select_related("project").get(pk=run_id)
    if run.status not in (RunStatus.FAILED, RunStatus.CANCELLED) or not workdir.exists():
        return False
    log_file = workdir / LOG_ARTIFACT
    if log_file.is_file() and not Artifact.objects.filter(run=run, name=LOG_ARTIFACT).exists():
        artifact = store_file(run, log_file, LOG_ARTIFACT)
        with transaction.atomic():
            _replace_artifacts(run_id, [artifact])
    shutil.rmtree(workdir, ignore_errors=True)
    return True


def do_sweep_final_workdirs(runs_dir: Path, *, older_than_s: float) -> list[int]:
    """Archive (:func:`do_archive_workdir`) every working folder under ``runs_dir`` whose run
    is failed or cancelled and finished more than ``older_than_s`` ago (its worker has long
    let go of it). Catches folders no worker removed: a worker killed after a cancel, runs
    failed before folders were archived. Folders of runs not in the database are left alone
    (a restore from an older backup must not delete what it does not know). Returns the ids."""
    if not runs_dir.is_dir():
        return []
    ids = {int(p.name): p for p in runs_dir.iterdir() if p.is_dir() and p.name.isdigit()}
    if not ids:
        return []
    cutoff = timezone.now() - timedelta(seconds=older_than_s)
    final = Run.objects.filter(
        pk__in=ids, status__in=(RunStatus.FAILED, RunStatus.CANCELLED), finished_at__lt=cutoff
    ).values_list("pk", flat=True)
    return sorted(run_id for run_id in final if do_archive_workdir(run_id, ids[run_id]))


@dataclass(frozen=True)
class Reaped:
    run_id: int
    outcome: str  # "requeued" | "failed" | "resent"


MAX_RESEND_BACKOFF = 8  # a queued run is re-sent after 1x, 2x, 4x, then every 8x REQUEUE_AFTER_S


def _hms(when: Any) -> str:
    return f"{timezone.localtime(when):%H:%M:%S}" if when else "never"


def do_reap_stale_runs(
    *,
    timeout_s: float | None = None,
    max_attempts: int | None = None,
    requeue_after_s: float | None = None,
) -> list[Reaped]:
    """Nothing stays stuck (docs/operations.md#faults).

    - A running run whose heartbeat is older than ``timeout_s`` lost its worker (SIGKILL, OOM,
      machine lost, or a database outage longer than the worker's retry budget): requeue it to
      resume from its checkpoint, up to ``max_attempts`` claims, or fail it.
    - A queued run that no worker started within ``requeue_after_s`` of its last send is sent
      again, whatever its task id (Redis restarted empty; a duplicate delivery is harmless, the
      claim is conditional). Each further re-send waits twice as long, up to 8x, so a run that is
      only waiting behind a long queue gathers a handful of duplicates, not hundreds. A run with
      no task id (never reached the broker) is re-sent after ``timeout_s``.

    Each requeue or re-send is stamped on the run (``notice``, ``notice_at``) for its page.
    """
    timeout_s = settings.H3LAB_HEARTBEAT_TIMEOUT_S if timeout_s is None else timeout_s
    max_attempts = settings.H3LAB_MAX_ATTEMPTS if max_attempts is None else max_attempts
    requeue_after_s = settings.H3LAB_REQUEUE_AFTER_S if requeue_after_s is None else requeue_after_s
    now = timezone.now()
    cutoff = now - timedelta(seconds=timeout_s)
    reaped: list[Reaped] = []
    fields = ("pk", "attempt", "claim", "queue", "heartbeat_at", "worker_host")
    for run in Run.objects.stale(cutoff).only(*fields):
        with transaction.atomic():
            stale = Run.objects.filter(
                pk=run.pk, status=RunStatus.RUNNING, claim=run.claim, heartbeat_at__lt=cutoff
            )
            worker = run.worker_host or "its worker"
            if run.attempt < max_attempts:
                notice = (
                    f"requeued after {worker} stopped responding (no heartbeat since "
                    f"{_hms(run.heartbeat_at)}); it resumes from its last checkpoint"
                )
                if stale.update(
                    status=RunStatus.QUEUED, claim=None, eta_s=None, dispatched_at=now,
                    resends=0, notice=notice[:500], notice_at=now,
                ):  # fmt: skip
                    announce(None, "run.requeue", run, new={"attempt": run.attempt})
                    enqueue_run(run)
                    reaped.append(Reaped(run.pk, "requeued"))
            else:
                msg = (
                    f"worker lost: no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC "
                    f"after {run.attempt} attempt(s)"
                )
                if stale.update(status=RunStatus.FAILED, finished_at=now, error=msg, claim=None):
                    announce(None, "run.fail", run, new={"error": msg})
                    reaped.append(Reaped(run.pk, "failed"))
    for run in _lost_messages(now, timeout_s, requeue_after_s):
        waited = (now - (run.dispatched_at or run.created_at)).total_seconds()
        notice = (
            f"re-sent to the queue: no worker had started it {waited:.0f} s after it was sent "
            "(its message was probably lost, e.g. the broker restarted)"
            if run.celery_task_id
            else "re-sent to the queue: the broker was unreachable when it was submitted"
        )
        with transaction.atomic():
            sent_before = (
                Q(dispatched_at=run.dispatched_at)
                if run.dispatched_at
                else Q(dispatched_at__isnull=True)
            )
            if Run.objects.filter(sent_before, pk=run.pk, status=RunStatus.QUEUED).update(
                dispatched_at=now, resends=F("resends") + 1, notice=notice, notice_at=now
            ):
                announce(None, "run.resend", run, new={"resends": run.resends + 1})
                enqueue_run(run)
                reaped.append(Reaped(run.pk, "resent"))
    return reaped


def _lost_messages(now: Any, timeout_s: float, requeue_after_s: float) -> list[Run]:
    """Queued runs due for a re-send (see :func:`do_reap_stale_runs`)."""
    due: list[Run] = []
    candidates = Run.objects.filter(status=RunStatus.QUEUED).only(
        "pk", "queue", "celery_task_id", "created_at", "dispatched_at", "resends"
    )
    for run in candidates.filter(
        created_at__lt=now - timedelta(seconds=min(timeout_s, requeue_after_s))
    ):
        if run.celery_task_id:
            wait = requeue_after_s * min(2**run.resends, MAX_RESEND_BACKOFF)
        else:
            wait = timeout_s
        if (now - (run.dispatched_at or run.created_at)).total_seconds() >= wait:
            due.append(run)
    return due

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
from django.db.models import F
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
        run_id=run_id, token=token, config=run.config, attempt=run.attempt, queue=run.queue
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
        Artifact.objects.filter(run_id=run_id, name__in=[a.name for a in artifacts]).delete()
        Artifact.objects.bulk_create(artifacts)
        announce(None, "run.succeed", run, new={"result": result})
    return True


def do_fail_run(run_id: int, token: uuid.UUID, *, error: str, traceback: str = "") -> bool:
    with transaction.atomic():
        n = _claimed(run_id, token).update(
            status=RunStatus.FAILED,
            finished_at=timezone.now(),
            error=error[:10_000],
            traceback=traceback[-50_000:],
            eta_s=None,
        )
        if n:
            run = Run.objects.get(pk=run_id)
            announce(None, "run.fail", run, new={"error": error[:500]})
    return bool(n)


@dataclass(frozen=True)
class Reaped:
    run_id: int
    outcome: str  # "requeued" | "failed"


def do_reap_stale_runs(
    *, timeout_s: float | None = None, max_attempts: int | None = None
) -> list[Reaped]:
    """Requeue (up to ``max_attempts`` claims) or fail running runs whose heartbeat stopped —
    the worker died (SIGKILL, OOM, machine lost). A requeued run resumes from its last
    checkpoint. Runs queued for longer than the timeout without a job id are resent too."""
    timeout_s = settings.H3LAB_HEARTBEAT_TIMEOUT_S if timeout_s is None else timeout_s
    max_attempts = settings.H3LAB_MAX_ATTEMPTS if max_attempts is None else max_attempts
    now = timezone.now()
    cutoff = now - timedelta(seconds=timeout_s)
    reaped: list[Reaped] = []
    for run in Run.objects.stale(cutoff).only("pk", "attempt", "claim", "queue", "heartbeat_at"):
        with transaction.atomic():
            stale = Run.objects.filter(
                pk=run.pk, status=RunStatus.RUNNING, claim=run.claim, heartbeat_at__lt=cutoff
            )
            if run.attempt < max_attempts:
                if stale.update(status=RunStatus.QUEUED, claim=None, eta_s=None):
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
    # Queued runs whose message never reached the broker (it was down at submit time).
    for run in Run.objects.filter(
        status=RunStatus.QUEUED, celery_task_id="", created_at__lt=cutoff
    ).only("pk", "queue"):
        with transaction.atomic():
            enqueue_run(run)
    return reaped

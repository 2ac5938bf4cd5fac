"""Every governed state change of the experiments app.

``do_*`` functions perform a change inside a transaction and announce it on
:data:`experiments.signals.governed_change` (the audit log listens); ``check_*`` functions
validate input first. Views, admin actions, commands and Celery tasks call these; nothing else
saves governed rows.

Run state moves only by *conditional* updates (``UPDATE … WHERE status = …``): a duplicate
delivery of a job, a worker that lost its claim, or a cancel racing a completion each find no
matching row and change nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from experiments.models import (
    Artifact,
    Experiment,
    Finding,
    FindingRevision,
    MetricPoint,
    MetricSnapshot,
    Project,
    RevisionState,
    Run,
    RunStatus,
    Tier,
)
from experiments.signals import acting_as, governed_change
from h3lab.config import RunConfig

log = logging.getLogger(__name__)

RUN_TASK = "h3lab.jobs.run_training"


def _announce(actor: Any, action: str, obj: Any, old: Any = None, new: Any = None) -> None:
    governed_change.send(sender=type(obj), actor=actor, action=action, obj=obj, old=old, new=new)


# --- projects -----------------------------------------------------------------------------------


def do_create_project(
    *, slug: str, name: str, description: str = "", members: Iterable[Any] = (), acting_user: Any
) -> Project:
    with transaction.atomic():
        group = Group.objects.create(name=f"project:{slug}")
        project = Project.objects.create(slug=slug, name=name, description=description, group=group)
        _announce(acting_user, "project.create", project, new={"slug": slug, "name": name})
        with acting_as(acting_user, "action"):
            group.user_set.add(*members)
    return project


# Membership is announced by the m2m_changed signal of the group's user set, wherever a change
# comes from (these actions, the admin, the shell), so these actions only say who acts: an
# announcement here as well would log each change twice.


def do_add_project_member(project: Project, user: Any, *, acting_user: Any) -> None:
    with transaction.atomic(), acting_as(acting_user, "action"):
        project.group.user_set.add(user)


def do_remove_project_member(project: Project, user: Any, *, acting_user: Any) -> None:
    with transaction.atomic(), acting_as(acting_user, "action"):
        project.group.user_set.remove(user)


# --- runs: submission and cancellation ---------------------------------------------------------


def check_submit_run(
    *,
    project: Project,
    config: dict[str, Any],
    experiment_name: str = "default",
    name: str = "",
    queue: str = "cpu",
    rerun_of: Run | None = None,
    enqueue: bool = True,
    acting_user: Any,
) -> Run:
    """Validate ``config`` against :class:`h3lab.config.RunConfig` (raises ConfigError naming
    every bad field) and submit the run."""
    cfg = RunConfig.from_dict(config)
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


def do_submit_run(
    *,
    project: Project,
    cfg: RunConfig,
    experiment_name: str,
    name: str = "",
    queue: str = "cpu",
    rerun_of: Run | None = None,
    enqueue: bool = True,
    acting_user: Any,
) -> Run:
    """Create the run (queued) and send its job after commit. ``enqueue=False`` leaves the
    job to the caller, which runs :func:`h3lab.jobs.execute_run` itself (the demo loader)."""
    with transaction.atomic():
        experiment, _ = Experiment.objects.get_or_create(
            project=project,
            name=experiment_name,
            defaults={"created_by": acting_user if _is_user(acting_user) else None},
        )
        run = Run.objects.create(
            experiment=experiment,
            project=project,
            name=name,
            created_by=acting_user if _is_user(acting_user) else None,
            config=cfg.to_dict(),
            preset=cfg.preset,
            task=cfg.task.name,
            queue=queue,
            total_steps=cfg.train.steps,
            rerun_of=rerun_of,
        )
        _announce(acting_user, "run.submit", run, new={"config": run.config, "queue": queue})
        if enqueue:
            enqueue_run(run)
    return run


def enqueue_run(run: Run) -> None:
    """Send the run's job once the transaction that created or requeued it commits."""
    run_id, queue = run.pk, run.queue

    def send() -> None:
        from h3lab.celery import app

        try:
            result = app.send_task(RUN_TASK, args=[run_id], queue=queue)
        except Exception:  # broker down: the run stays queued and the reaper resends it
            log.exception("could not enqueue run %s", run_id)
            return
        Run.objects.filter(pk=run_id).update(celery_task_id=result.id)

    transaction.on_commit(send)


def do_cancel_run(run: Run, *, acting_user: Any) -> bool:
    """Cancel a queued or running run. The worker notices within a heartbeat and stops; its
    later writes are conditional on the run still running, so it can never flip back."""
    with transaction.atomic():
        now = timezone.now()
        changed = Run.objects.filter(pk=run.pk, status__in=(RunStatus.QUEUED, RunStatus.RUNNING))
        old_status = run.status
        n = changed.update(status=RunStatus.CANCELLED, finished_at=now, eta_s=None)
        if n:
            old, new = {"status": old_status}, {"status": RunStatus.CANCELLED.value}
            _announce(acting_user, "run.cancel", run, old=old, new=new)
    run.refresh_from_db()
    return bool(n)


# --- runs: worker side -------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    run_id: int
    token: uuid.UUID
    config: dict[str, Any]
    attempt: int


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
        _announce(None, "run.start", run, new={"attempt": run.attempt, "host": host})
    return Claim(run_id=run_id, token=token, config=run.config, attempt=run.attempt)


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
        _announce(None, "run.succeed", run, new={"result": result})
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
            _announce(None, "run.fail", run, new={"error": error[:500]})
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
                    _announce(None, "run.requeue", run, new={"attempt": run.attempt})
                    enqueue_run(run)
                    reaped.append(Reaped(run.pk, "requeued"))
            else:
                msg = (
                    f"worker lost: no heartbeat since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC "
                    f"after {run.attempt} attempt(s)"
                )
                if stale.update(status=RunStatus.FAILED, finished_at=now, error=msg, claim=None):
                    _announce(None, "run.fail", run, new={"error": msg})
                    reaped.append(Reaped(run.pk, "failed"))
    # Queued runs whose message never reached the broker (it was down at submit time).
    for run in Run.objects.filter(
        status=RunStatus.QUEUED, celery_task_id="", created_at__lt=cutoff
    ).only("pk", "queue"):
        with transaction.atomic():
            enqueue_run(run)
    return reaped


# --- artifacts -------------------------------------------------------------------------------


def do_record_artifact_download(artifact: Artifact, acting_user: Any) -> None:
    """Announce that ``acting_user`` (None or anonymous for the public) fetched an artifact's
    bytes, so the audit log records who downloaded what. Changes no row itself."""
    actor = acting_user if _is_user(acting_user) else None
    _announce(actor, "artifact.download", artifact, new={"sha256": artifact.sha256})


# --- findings --------------------------------------------------------------------------------


def check_record_finding(
    *,
    title: str,
    body: str,
    runs: Iterable[Run],
    artifacts: Iterable[Artifact] = (),
    metrics: Iterable[str] = (),
    acting_user: Any,
) -> Finding:
    """Check the evidence, then record the finding in the runs' project. The one rule of the
    web form and the API: at least one run, all of one project; each artifact one that a cited
    run produced; each named metric series frozen for every cited run that recorded it.

    Raises ``ValidationError`` keyed by ``runs`` or ``artifacts``. Whether the user may cite
    these runs is the caller's question to :mod:`disclosure.policy`."""
    runs = list(dict.fromkeys(runs))
    artifacts = list(dict.fromkeys(artifacts))
    if not runs:
        raise ValidationError({"runs": "Cite at least one run."})
    if len({run.project_id for run in runs}) != 1:
        raise ValidationError({"runs": "Cite runs of one project."})
    cited = {run.pk for run in runs}
    if any(artifact.run_id not in cited for artifact in artifacts):
        raise ValidationError({"artifacts": "Cite artifacts of the cited runs."})
    return do_record_finding(
        project=runs[0].project,
        title=title,
        body=body,
        runs=runs,
        artifacts=artifacts,
        snapshot_metrics=[(run, name) for run in runs for name in dict.fromkeys(metrics)],
        acting_user=acting_user,
    )


def do_record_finding(
    *,
    project: Project,
    title: str,
    body: str,
    runs: Iterable[Run] = (),
    artifacts: Iterable[Artifact] = (),
    snapshot_metrics: Iterable[tuple[Run, str]] = (),
    acting_user: Any,
) -> Finding:
    """Record a finding (team tier, draft) with its evidence. Metric snapshots freeze the
    latest value of each named series at the time of recording."""
    runs = list(runs)
    artifacts = list(artifacts)
    if any(r.project_id != project.pk for r in runs) or any(
        a.project_id != project.pk for a in artifacts
    ):
        raise ValueError("evidence must come from the finding's project")
    with transaction.atomic():
        finding = Finding.objects.create(
            project=project, title=title, body=body, created_by=acting_user
        )
        finding.runs.set(runs)
        finding.artifacts.set(artifacts)
        snaps = []
        for run, name in snapshot_metrics:
            point = MetricPoint.objects.filter(run=run, name=name).order_by("-step").first()
            if point is not None:
                snaps.append(
                    MetricSnapshot(
                        finding=finding, run=run, name=name, step=point.step, value=point.value
                    )
                )
        MetricSnapshot.objects.bulk_create(snaps)
        _announce(acting_user, "finding.create", finding, new={"title": title})
    return finding


def finding_content(finding: Finding) -> dict[str, Any]:
    """The revisable content of a finding as plain values (ids sorted)."""
    return {
        "title": finding.title,
        "body": finding.body,
        "run_ids": sorted(finding.runs.values_list("pk", flat=True)),
        "artifact_ids": sorted(finding.artifacts.values_list("pk", flat=True)),
        "dependency_ids": sorted(finding.depends_on.values_list("pk", flat=True)),
    }


def _first_revision(finding: Finding) -> None:
    """Findings recorded before revisions existed get their content as revision 1."""
    if not FindingRevision.objects.filter(finding=finding).exists():
        FindingRevision.objects.create(
            finding=finding,
            number=1,
            state=RevisionState.APPROVED,
            created_by=finding.created_by,
            created_at=finding.created_at,
            decided_at=finding.created_at,
            **finding_content(finding),
        )


def _next_revision(finding: Finding, content: dict[str, Any], **fields: Any) -> FindingRevision:
    _first_revision(finding)
    last = FindingRevision.objects.filter(finding=finding).order_by("-number").first()
    number = (last.number if last else 0) + 1
    return FindingRevision.objects.create(
        finding=finding, number=number, tier=finding.tier, **content, **fields
    )


def do_edit_finding(
    finding: Finding,
    *,
    title: str,
    body: str,
    note: str = "",
    acting_user: Any,
) -> Finding:
    """Edit a team-tier finding in place, keeping the old content as a revision.

    SECURITY: once a finding has left the team tier its content is frozen; an edit is then a
    pending revision that passes review (``disclosure.actions.revisions``), never a change
    readers see at once."""
    with transaction.atomic():
        finding = Finding.objects.select_for_update().get(pk=finding.pk)
        if finding.tier != Tier.TEAM or finding.is_retracted:
            raise ValidationError(
                "This finding has left the team tier: its content is frozen. Propose a "
                "revision; readers keep the current text until review approves it."
            )
        old = {"title": finding.title, "body": finding.body}
        content = {**finding_content(finding), "title": title, "body": body}
        revision = _next_revision(
            finding,
            content,
            note=note,
            state=RevisionState.APPROVED,
            created_by=acting_user if _is_user(acting_user) else None,
            decided_at=timezone.now(),
        )
        Finding.objects.filter(pk=finding.pk).update(
            title=title, body=body, updated_at=timezone.now()
        )
        finding.refresh_from_db()
        _announce(
            acting_user,
            "finding.edit",
            finding,
            old=old,
            new={"title": title, "body": body, "revision": revision.number},
        )
    return finding


def do_create_pending_revision(
    finding: Finding, *, content: dict[str, Any], note: str = "", acting_user: Any
) -> FindingRevision:
    """A proposed revision of a finding above the team tier. Readers see none of it until
    :func:`do_apply_revision`; disclosure opens the review request that decides it."""
    with transaction.atomic():
        finding = Finding.objects.select_for_update().get(pk=finding.pk)
        if FindingRevision.objects.filter(finding=finding, state=RevisionState.PENDING).exists():
            raise ValidationError("A revision of this finding is already pending review.")
        revision = _next_revision(
            finding,
            content,
            note=note,
            state=RevisionState.PENDING,
            created_by=acting_user if _is_user(acting_user) else None,
        )
        _announce(
            acting_user,
            "finding.revision.propose",
            revision,
            new={"number": revision.number, **content},
        )
    return revision


def do_apply_revision(revision: FindingRevision, *, acting_user: Any) -> bool:
    """Make an approved revision what readers see. Conditional on the revision still being
    pending, so a duplicate scheduler run applies it once."""
    now = timezone.now()
    with transaction.atomic():
        n = FindingRevision.objects.filter(pk=revision.pk, state=RevisionState.PENDING).update(
            state=RevisionState.APPROVED, decided_at=now
        )
        if not n:
            return False
        revision.refresh_from_db()
        finding = Finding.objects.select_for_update().get(pk=revision.finding_id)
        old = finding_content(finding)
        Finding.objects.filter(pk=finding.pk).update(
            title=revision.title, body=revision.body, updated_at=now
        )
        finding.runs.set(revision.run_ids)
        finding.artifacts.set(revision.artifact_ids)
        finding.depends_on.set(revision.dependency_ids)
        _announce(
            acting_user,
            "finding.revision.apply",
            revision,
            old=old,
            new={"number": revision.number, **finding_content(finding)},
        )
    return True


def do_withdraw_revision(revision: FindingRevision, *, reason: str, acting_user: Any) -> bool:
    with transaction.atomic():
        n = FindingRevision.objects.filter(pk=revision.pk, state=RevisionState.PENDING).update(
            state=RevisionState.WITHDRAWN, decided_at=timezone.now()
        )
        if n:
            _announce(
                acting_user,
                "finding.revision.withdraw",
                revision,
                new={"number": revision.number, "reason": reason},
            )
    return bool(n)


def _is_user(user: Any) -> bool:
    return user is not None and getattr(user, "is_authenticated", False)


__all__ = [
    "Claim",
    "check_record_finding",
    "check_submit_run",
    "do_cancel_run",
    "do_claim_run",
    "do_complete_run",
    "do_create_project",
    "do_edit_finding",
    "do_fail_run",
    "do_reap_stale_runs",
    "do_record_artifact_download",
    "do_record_finding",
    "do_record_heartbeat",
    "do_record_progress",
    "do_submit_run",
    "is_cancelled",
]

"""Findings: recording one with its evidence, editing it, and its revisions."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from experiments.models import (
    Artifact,
    Finding,
    FindingRevision,
    MetricPoint,
    MetricSnapshot,
    Project,
    Reveals,
    RevisionState,
    Run,
    Tier,
)
from experiments.signals import announce, is_user
from experiments.users import ActingUser, user_or_system

log = logging.getLogger(__name__)


def check_record_finding(
    *,
    title: str,
    body: str,
    runs: Iterable[Run],
    artifacts: Iterable[Artifact] = (),
    metrics: Iterable[str] = (),
    reveals: str = "",
    acting_user: ActingUser,
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
        reveals=reveals,
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
    reveals: str = "",
    acting_user: ActingUser,
) -> Finding:
    """Record a finding (team tier, draft) with its evidence. Metric snapshots freeze the
    latest value of each named series at the time of recording. ``reveals`` (a
    :class:`~experiments.models.Reveals`) tells reviewers what kind of result it is."""
    if reveals not in Reveals.values:
        raise ValueError(f"unknown reveals {reveals!r}")
    acting_user = user_or_system(acting_user)
    runs = list(runs)
    artifacts = list(artifacts)
    if any(r.project_id != project.pk for r in runs) or any(
        a.project_id != project.pk for a in artifacts
    ):
        raise ValueError("evidence must come from the finding's project")
    with transaction.atomic():
        finding = Finding.objects.create(
            project=project, title=title, body=body, created_by=acting_user, reveals=reveals
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
        new = {"title": title, **({"reveals": reveals} if reveals else {})}
        announce(acting_user, "finding.create", finding, new=new)
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
    acting_user: ActingUser,
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
            created_by=acting_user if is_user(acting_user) else None,
            decided_at=timezone.now(),
        )
        Finding.objects.filter(pk=finding.pk).update(
            title=title, body=body, updated_at=timezone.now()
        )
        finding.refresh_from_db()
        announce(
            acting_user,
            "finding.edit",
            finding,
            old=old,
            new={"title": title, "body": body, "revision": revision.number},
        )
    return finding


def do_create_pending_revision(
    finding: Finding, *, content: dict[str, Any], note: str = "", acting_user: ActingUser
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
            created_by=acting_user if is_user(acting_user) else None,
        )
        announce(
            acting_user,
            "finding.revision.propose",
            revision,
            new={"number": revision.number, **content},
        )
    return revision


def do_apply_revision(revision: FindingRevision, *, acting_user: ActingUser) -> bool:
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
        announce(
            acting_user,
            "finding.revision.apply",
            revision,
            old=old,
            new={"number": revision.number, **finding_content(finding)},
        )
    return True


def do_withdraw_revision(
    revision: FindingRevision, *, reason: str, acting_user: ActingUser
) -> bool:
    with transaction.atomic():
        n = FindingRevision.objects.filter(pk=revision.pk, state=RevisionState.PENDING).update(
            state=RevisionState.WITHDRAWN, decided_at=timezone.now()
        )
        if n:
            announce(
                acting_user,
                "finding.revision.withdraw",
                revision,
                new={"number": revision.number, "reason": reason},
            )
    return bool(n)

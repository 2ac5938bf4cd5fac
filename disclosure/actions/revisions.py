"""Revisions of a finding above the team tier: proposed, reviewed to the finding's own tier,
then applied, or withdrawn.

A revision request is a :class:`ReleaseRequest` whose ``from_tier`` and ``target_tier`` are
the finding's current tier: it passes exactly the gates a release to that tier passes
(assessment, quorum, objections, dependencies, observation window, and for the public tier
the embargo), and :func:`disclosure.actions.release.do_promote` applies it instead of moving
the finding. Until then every reader keeps the last approved revision.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from disclosure import audit
from disclosure.actions.release import do_promote
from disclosure.gates import gate_reasons
from disclosure.models import NotificationKind, ReleaseRequest, RequestState
from disclosure.notifications import notify, release_managers, reviewers
from experiments.actions.findings import (
    do_create_pending_revision,
    do_withdraw_revision,
    finding_content,
)
from experiments.models import Artifact, Finding, FindingRevision, RevisionState, Run, Tier
from experiments.users import ActingUser, user_or_system


def check_propose_revision(
    finding: Finding,
    *,
    title: str,
    body: str,
    runs: Iterable[Run] | None = None,
    artifacts: Iterable[Artifact] | None = None,
    dependencies: Iterable[Finding] | None = None,
    note: str = "",
    acting_user: ActingUser,
) -> FindingRevision:
    """Validate a proposed edit of a finding above the team tier, then open its review.

    Evidence left out keeps what the finding cites now. Cited runs and artifacts must come
    from the finding's project; dependencies must be other findings."""
    if finding.is_retracted:
        raise ValidationError("A retracted finding cannot be revised.")
    if finding.tier == Tier.TEAM:
        raise ValidationError("A team-tier finding is edited in place, not revised.")
    if not title.strip():
        raise ValidationError({"title": "A finding needs a title."})
    content = finding_content(finding)
    content.update(title=title.strip(), body=body)
    if runs is not None:
        runs = list(runs)
        if any(r.project_id != finding.project_id for r in runs):
            raise ValidationError({"runs": "Cited runs must come from the finding's project."})
        content["run_ids"] = sorted(r.pk for r in runs)
    if artifacts is not None:
        artifacts = list(artifacts)
        if any(a.project_id != finding.project_id for a in artifacts):
            raise ValidationError(
                {"artifacts": "Cited artifacts must come from the finding's project."}
            )
        content["artifact_ids"] = sorted(a.pk for a in artifacts)
    if dependencies is not None:
        deps = sorted(d.pk for d in dependencies)
        if finding.pk in deps:
            raise ValidationError({"dependencies": "A finding cannot depend on itself."})
        content["dependency_ids"] = deps
    if content == finding_content(finding):
        raise ValidationError("The revision changes nothing.")
    return do_propose_revision(finding, content=content, note=note, acting_user=acting_user)


def do_propose_revision(
    finding: Finding, *, content: dict[str, Any], note: str = "", acting_user: ActingUser
) -> FindingRevision:
    acting_user = user_or_system(acting_user)
    with transaction.atomic():
        finding = Finding.objects.select_for_update().select_related("project").get(pk=finding.pk)
        if finding.is_retracted or finding.tier == Tier.TEAM:
            raise ValidationError("Only a released finding is revised through review.")
        if ReleaseRequest.objects.pending().filter(finding=finding).exists():
            raise ValidationError(
                "A request for this finding is already pending: wait for its decision."
            )
        revision = do_create_pending_revision(
            finding, content=content, note=note, acting_user=acting_user
        )
        request = ReleaseRequest.objects.create(
            finding=finding,
            from_tier=finding.tier,
            target_tier=finding.tier,
            requested_by=acting_user,
            rationale=note,
            revision=revision,
        )
        audit.record(
            acting_user,
            "revision.request",
            request,
            new={"revision": revision.number, "tier": Tier(finding.tier).label},
            finding_id=finding.pk,
        )
        notify(
            reviewers() + release_managers(),
            NotificationKind.REVIEW_REQUESTED,
            f"Revision {revision.number} of finding #{finding.pk} needs review",
            url=finding.get_absolute_url(),
            finding=finding,
        )
    if not gate_reasons(request):  # a tier whose policy needs no approval (review)
        do_promote(request, acting_user=acting_user)
    revision.refresh_from_db()
    return revision


def do_withdraw_pending_revision(
    revision: FindingRevision, *, reason: str = "", acting_user: ActingUser
) -> bool:
    """The proposer (or anyone who may edit the finding) withdraws a pending revision; its
    review request is cancelled with it."""
    with transaction.atomic():
        if not do_withdraw_revision(revision, reason=reason, acting_user=acting_user):
            return False
        ReleaseRequest.objects.pending().filter(revision=revision).update(
            state=RequestState.CANCELLED, hold_reason="the revision was withdrawn"
        )
    return True


def pending_revision(finding: Finding) -> FindingRevision | None:
    return FindingRevision.objects.filter(finding=finding, state=RevisionState.PENDING).first()

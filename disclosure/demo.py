"""Disclosure demo data for ``manage.py load_demo``: an agreement, a collaborator grant, a
second reviewer, a finding at each tier moved there through the real actions, an assessment,
an open objection-free request, a scheduled public release that is still short of quorum,
and the mechanism finding (recorded by :mod:`experiments.demo`) sent to review.
Idempotent: findings are looked up by title."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.db import transaction
from django.utils import timezone

from disclosure.actions.agreements import do_accept_agreement, do_publish_agreement
from disclosure.actions.grants import do_give_grant
from disclosure.actions.release import (
    check_schedule_release,
    do_release_due,
    do_request_release,
    do_request_review,
)
from disclosure.actions.review import do_assess_finding, do_vote
from disclosure.models import AgreementAcceptance, AgreementVersion, Grant, ReleaseRequest
from experiments.actions.findings import do_record_finding
from experiments.demo import MECHANISM_FINDING
from experiments.models import Finding, Tier

SECOND_REVIEWER = ("katalin", "katalin-h3lab-demo")

FINDINGS = [
    (
        Tier.REVIEW,
        "H3's shift SSM implements a previous-token head",
        "Probing `blocks.0.mixer.hook_kernel` shows the shift kernel concentrating on lag 1, the "
        "first half of an induction circuit.",
    ),
    (
        Tier.PARTNERS,
        "Induction behaviour appears in H3 at the same step as in attention",
        "Both models show the accuracy jump on the induction task within the same window of "
        "training steps; shared with partners for replication.",
    ),
    (
        Tier.PUBLIC,
        "Synthetic induction-head benchmark for state-space models",
        "A benchmark description and baseline accuracies; no capability-relevant detail.",
    ),
]


def _walk_to(finding: Finding, tier: int, users: dict[str, Any], *, backdate: bool) -> None:
    """Move ``finding`` up to ``tier`` through requests, assessments, votes and decisions."""
    ada, rosalind, mary = users["ada"], users["rosalind"], users["mary"]
    katalin = users[SECOND_REVIEWER[0]]
    do_request_review(finding, acting_user=ada)
    do_assess_finding(
        finding,
        capability_uplift=0,
        alignment_value=2,
        categories=["interpretability"],
        rationale="Describes a mechanism, no recipe for new capabilities.",
        acting_user=rosalind,
    )
    while (finding := Finding.objects.get(pk=finding.pk)).tier < tier:
        request = do_request_release(finding, acting_user=mary)
        if backdate:  # demo only: let the policy's observation window have passed already
            ReleaseRequest.objects.filter(pk=request.pk).update(
                requested_at=timezone.now() - timedelta(days=8)
            )
            request.refresh_from_db()
        for reviewer in (rosalind, katalin):
            do_vote(request, kind="approve", rationale="fine to share", acting_user=reviewer)
        embargo = request.requested_at + timedelta(days=7 if backdate else 0)
        check_schedule_release(request, embargo_until=embargo, acting_user=mary)
        do_release_due()


def load_disclosure_demo(demo: Any) -> None:
    """Called by ``load_demo`` after its users, projects and findings exist."""
    users: dict[str, User] = dict(demo.users)
    name, password = SECOND_REVIEWER
    katalin, _ = User.objects.get_or_create(
        username=name, defaults={"email": f"{name}@h3lab.localhost"}
    )
    katalin.set_password(password)
    katalin.save()
    Group.objects.get_or_create(name=settings.H3LAB_REVIEW_BOARD_GROUP)[0].user_set.add(katalin)
    users[name] = katalin
    demo.log(f"disclosure: second reviewer {name} / {password}")
    admin, mary, chen = users["admin"], users["mary"], users["chen"]
    project = demo.projects["induction-heads"]

    with transaction.atomic():
        agreement = AgreementVersion.objects.current() or do_publish_agreement(
            title="h3lab collaborator agreement",
            text="Restricted findings are for your organisation's safety research only. Do not "
            "redistribute them or their evidence; report suspected misuse; access is logged.",
            effective_at=timezone.now() - timedelta(days=1),
            acting_user=admin,
        )
        if not Grant.objects.active().filter(user=chen, project=project).exists():
            do_give_grant(
                user=chen,
                project=project,
                expires_at=timezone.now() + timedelta(days=60),
                note="replication partner",
                acting_user=mary,
            )
        if not AgreementAcceptance.objects.filter(user=chen, agreement=agreement).exists():
            do_accept_agreement(chen, agreement, acting_user=chen)

    for tier, title, body in FINDINGS:
        if Finding.objects.filter(project=project, title=title).exists():
            continue
        with transaction.atomic():
            finding = do_record_finding(
                project=project, title=title, body=body, acting_user=users["ada"]
            )
            _walk_to(finding, tier, users, backdate=tier == Tier.PUBLIC)

    # A scheduled public release that is one approval short: the scheduler will hold it back
    # at the embargo instant and say why.
    title = FINDINGS[1][1]
    finding = Finding.objects.get(project=project, title=title)
    if (
        finding.tier == Tier.PARTNERS
        and not ReleaseRequest.objects.pending().filter(finding=finding).exists()
    ):
        with transaction.atomic():
            request = do_request_release(finding, acting_user=mary)
            do_vote(request, kind="approve", rationale="ready", acting_user=users["rosalind"])
            check_schedule_release(
                request, embargo_until=timezone.now() + timedelta(days=3), acting_user=mary
            )
    # The mechanism finding, citing the analyses of the bundled H3 model, goes to the review
    # board for its dual-use assessment (its author asks; the reviewers have not answered yet).
    mechanism = Finding.objects.filter(project=project, title=MECHANISM_FINDING).first()
    if (
        mechanism is not None
        and mechanism.tier == Tier.TEAM
        and not ReleaseRequest.objects.filter(finding=mechanism).exists()
    ):
        with transaction.atomic():
            do_request_review(
                mechanism,
                rationale="Ablation and patching results on a trained model; please assess.",
                acting_user=users["ada"],
            )
    demo.log(
        "disclosure: agreement, chen's grant, findings at every tier, a scheduled release, "
        "the mechanism finding in review"
    )

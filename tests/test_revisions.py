"""Finding revisions: content is frozen once a finding leaves the team tier; an edit is a
revision that passes review to the finding's own tier before any reader sees it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from disclosure.actions.release import check_schedule_release, do_release_due
from disclosure.actions.retraction import do_retract_finding
from disclosure.actions.review import do_vote
from disclosure.actions.revisions import (
    check_propose_revision,
    do_withdraw_pending_revision,
    pending_revision,
)
from disclosure.gates import gate_reasons
from disclosure.models import ReleaseDecision, RequestState
from experiments.actions.findings import do_edit_finding
from experiments.models import FindingRevision, RevisionState, Tier
from tests import factories
from tests.conftest import Cast, login
from tests.publishing import _reviewer, promote

pytestmark = pytest.mark.django_db


def board(cast: Cast) -> list[User]:
    return [cast.rita, _reviewer("ravi"), _reviewer("rosa")]


def test_a_team_tier_edit_applies_at_once_and_keeps_the_old_text_as_a_revision(
    cast: Cast,
) -> None:
    finding = factories.make_finding(cast.lab.project, title="Draft", body="old words")
    do_edit_finding(finding, title="Draft", body="new words", acting_user=cast.lab.alice)
    finding.refresh_from_db()
    assert finding.body == "new words"
    bodies = list(FindingRevision.objects.filter(finding=finding).values_list("body", "state"))
    assert bodies == [("old words", "approved"), ("new words", "approved")]


def test_an_edit_in_place_of_a_released_finding_is_refused(cast: Cast) -> None:
    finding = promote(cast, factories.make_finding(cast.lab.project, body="released words"))
    with pytest.raises(ValidationError, match="frozen"):
        do_edit_finding(finding, title="x", body="rewritten", acting_user=cast.lab.alice)
    finding.refresh_from_db()
    assert finding.body == "released words"


def test_readers_keep_the_approved_text_until_the_revision_passes_the_partners_gates(
    cast: Cast,
) -> None:
    finding = promote(
        cast, factories.make_finding(cast.lab.project, body="PARTNER-OLD"), to=Tier.PARTNERS
    )
    revision = check_propose_revision(
        finding, title=finding.title, body="PARTNER-NEW", acting_user=cast.lab.alice
    )
    assert revision.state == RevisionState.PENDING
    carol = login(cast.carol)
    page = carol.get(finding.get_absolute_url()).content.decode()
    assert "PARTNER-OLD" in page and "PARTNER-NEW" not in page
    request = revision.request
    assert "0 of 1 required approvals" in " ".join(gate_reasons(request))
    for reviewer in board(cast):
        do_vote(request, kind="approve", acting_user=reviewer)
    check_schedule_release(request, embargo_until=timezone.now(), acting_user=cast.mara)
    do_release_due(now=timezone.now() + timedelta(seconds=1))
    finding.refresh_from_db()
    revision.refresh_from_db()
    assert (finding.tier, finding.body, revision.state) == (
        Tier.PARTNERS,
        "PARTNER-NEW",
        "approved",
    )
    decision = ReleaseDecision.objects.filter(request=request).get()
    assert (decision.from_tier, decision.to_tier) == (Tier.PARTNERS, Tier.PARTNERS)
    assert "PARTNER-NEW" in carol.get(finding.get_absolute_url()).content.decode()


def test_an_objection_holds_a_revision_of_a_public_finding(cast: Cast) -> None:
    finding = promote(cast, factories.make_finding(cast.lab.project, body="PUBLIC-OLD"))
    revision = check_propose_revision(
        finding, title=finding.title, body="PUBLIC-NEW", acting_user=cast.lab.alice
    )
    request = revision.request
    do_vote(request, kind="object", rationale="overclaims", acting_user=cast.rita)
    for reviewer in board(cast)[1:]:
        do_vote(request, kind="approve", acting_user=reviewer)
    check_schedule_release(
        request, embargo_until=timezone.now() + timedelta(hours=25), acting_user=cast.mara
    )
    do_release_due(now=timezone.now() + timedelta(hours=26))
    finding.refresh_from_db()
    assert finding.body == "PUBLIC-OLD"
    request.refresh_from_db()
    assert "unresolved objection" in request.hold_reason
    assert "PUBLIC-NEW" not in Client().get(finding.get_absolute_url()).content.decode()


def test_a_revision_of_a_review_tier_finding_passes_at_once_under_the_default_policy(
    cast: Cast,
) -> None:
    finding = promote(cast, factories.make_finding(cast.lab.project, body="A"), to=Tier.REVIEW)
    revision = check_propose_revision(
        finding, title=finding.title, body="B", acting_user=cast.lab.alice
    )
    finding.refresh_from_db()
    assert (revision.state, finding.body) == (RevisionState.APPROVED, "B")


def test_a_revision_may_not_cite_another_projects_evidence(cast: Cast) -> None:
    finding = promote(cast, factories.make_finding(cast.lab.project), to=Tier.PARTNERS)
    foreign = factories.make_run(cast.lab.other_project)
    with pytest.raises(ValidationError, match="finding's project"):
        check_propose_revision(
            finding, title="t", body="b", runs=[foreign], acting_user=cast.lab.alice
        )


def test_one_pending_revision_at_a_time_and_withdrawal_cancels_its_review(cast: Cast) -> None:
    finding = promote(cast, factories.make_finding(cast.lab.project), to=Tier.PARTNERS)
    revision = check_propose_revision(finding, title="t", body="b1", acting_user=cast.lab.alice)
    with pytest.raises(ValidationError, match="already pending"):
        check_propose_revision(finding, title="t", body="b2", acting_user=cast.lab.alice)
    assert do_withdraw_pending_revision(revision, reason="typo", acting_user=cast.lab.alice)
    revision.refresh_from_db()
    revision.request.refresh_from_db()
    assert revision.state == RevisionState.WITHDRAWN
    assert revision.request.state == RequestState.CANCELLED
    assert pending_revision(finding) is None


def test_retraction_withdraws_a_pending_revision(cast: Cast) -> None:
    finding = promote(cast, factories.make_finding(cast.lab.project), to=Tier.PARTNERS)
    revision = check_propose_revision(finding, title="t", body="b", acting_user=cast.lab.alice)
    do_retract_finding(finding, reason="wrong", acting_user=cast.lab.alice)
    revision.refresh_from_db()
    assert revision.state == RevisionState.WITHDRAWN


def test_the_web_edit_of_a_partners_finding_opens_a_revision_and_reviewers_see_the_diff(
    cast: Cast,
) -> None:
    finding = promote(
        cast, factories.make_finding(cast.lab.project, body="line one\nOLD LINE"), to=Tier.PARTNERS
    )
    alice = login(cast.lab.alice)
    response = alice.post(
        reverse("finding-edit", args=[finding.pk]),
        {"title": finding.title, "body": "line one\nNEW LINE", "note": "clearer"},
    )
    assert response.status_code == 302
    finding.refresh_from_db()
    assert finding.body == "line one\nOLD LINE"
    review_page = login(cast.rita).get(finding.get_absolute_url()).content.decode()
    assert 'class="diff-insert">+ NEW LINE' in review_page
    assert 'class="diff-delete">- OLD LINE' in review_page
    partner_page = login(cast.carol).get(finding.get_absolute_url()).content.decode()
    assert "NEW LINE" not in partner_page and "pending review" not in partner_page


def test_a_web_edit_with_no_title_is_a_form_error_and_changes_nothing(cast: Cast) -> None:
    finding = factories.make_finding(cast.lab.project, title="Kept", body="kept")
    response = login(cast.lab.alice).post(
        reverse("finding-edit", args=[finding.pk]), {"title": "", "body": "lost?"}
    )
    assert response.status_code == 200
    assert "This field is required" in response.content.decode()
    finding.refresh_from_db()
    assert (finding.title, finding.body) == ("Kept", "kept")


def test_readers_see_only_revisions_from_their_tier_on(cast: Cast) -> None:
    finding = factories.make_finding(cast.lab.project, body="TEAM-DRAFT-1")
    do_edit_finding(finding, title=finding.title, body="TEAM-DRAFT-2", acting_user=cast.lab.alice)
    finding = promote(cast, finding, to=Tier.PARTNERS)
    check_propose_revision(finding, title=finding.title, body="P1", acting_user=cast.lab.alice)
    finding.refresh_from_db()
    from disclosure import policy

    numbers = [r.number for r in policy.visible_revisions(cast.carol, finding)]
    team = [r.number for r in policy.visible_revisions(cast.lab.alice, finding)]
    assert team == [1, 2, 3]
    # carol (partners) sees the revision current when it reached partners, not the drafts
    assert numbers == [2]

"""Governance side doors: each test reproduces a way around the actions, their checks or the
audit log, and states the closed door."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.urls import reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm, remove_perm

from disclosure import policy
from disclosure.actions.grants import check_give_grant, do_approve_grant
from disclosure.actions.release import do_request_release
from disclosure.actions.retraction import do_retract_finding
from disclosure.actions.review import do_clear_objection, do_vote, do_withdraw_objection
from disclosure.models import AuditEntry, Grant, GrantApproval, Vote
from experiments.actions.projects import do_add_project_member, do_remove_project_member
from experiments.models import Artifact, Finding, FindingStatus, Tier
from experiments.signals import acting_as
from experiments.storage import store_file
from tests import factories
from tests.conftest import Cast, login
from tests.test_admin_matrix import make_staff, url

pytestmark = pytest.mark.django_db


def artifact_of(cast: Cast, tmp_path: Path, name: str = "ckpt.safetensors") -> Artifact:
    run = factories.make_run(cast.lab.project, user=cast.lab.alice)
    src = tmp_path / name
    src.write_bytes(b"weights")
    artifact = store_file(run, src, name)
    artifact.save()
    return artifact


# --- 1. the admin -------------------------------------------------------------------------------


def test_staff_cannot_attach_a_team_artifact_to_a_public_finding_in_the_admin(
    cast: Cast, tmp_path: Path
) -> None:
    alice = cast.lab.alice
    make_staff(alice)
    artifact = artifact_of(cast, tmp_path)
    public = factories.make_finding(cast.lab.project, tier=Tier.PUBLIC, title="Open result")
    before = AuditEntry.objects.count()
    response = login(alice).post(
        url(Finding, "change", public.pk),
        {"title": public.title, "body": public.body, "project": public.project_id,
         "artifacts": [artifact.pk]},
    )  # fmt: skip
    assert response.status_code == 403
    assert not public.artifacts.exists()
    assert AuditEntry.objects.count() == before
    assert login(cast.lab.charlie).get(artifact.get_absolute_url()).status_code == 404


# --- 2. membership is audited wherever it comes from ---------------------------------------------


def test_adding_a_user_to_a_project_group_through_the_orm_is_audited(cast: Cast) -> None:
    cast.lab.project.group.user_set.add(cast.lab.charlie)
    entry = AuditEntry.objects.filter(action="project.add_member").latest("id")
    assert entry.new == {"user": "charlie", "group": "project:induction", "via": "orm"}
    assert entry.actor is None and entry.object_id == str(cast.lab.project.pk)


def test_removing_and_clearing_members_are_audited_per_member(cast: Cast) -> None:
    group = cast.lab.project.group
    group.user_set.add(cast.lab.charlie, cast.lab.bob)
    with acting_as(cast.mara, "admin"):
        cast.lab.charlie.groups.remove(group)
        group.user_set.clear()
    removed = AuditEntry.objects.filter(action="project.remove_member").order_by("id")
    assert [(e.old["user"], e.actor_name, e.old["via"]) for e in removed] == [  # type: ignore[index]
        ("charlie", "mara", "admin"),
        ("alice", "mara", "admin"),
        ("bob", "mara", "admin"),
    ]


def test_role_groups_are_audited_too(cast: Cast) -> None:
    Group.objects.get(name="release-managers").user_set.add(cast.lab.charlie)
    entry = AuditEntry.objects.filter(action="group.add_member").latest("id")
    assert entry.new is not None and entry.new["group"] == "release-managers"


def test_the_membership_actions_log_each_change_once_under_their_actor(cast: Cast) -> None:
    do_add_project_member(cast.lab.project, cast.lab.charlie, acting_user=cast.mara)
    do_remove_project_member(cast.lab.project, cast.lab.charlie, acting_user=cast.mara)
    entries = AuditEntry.objects.filter(action__startswith="project.", actor=cast.mara)
    assert [(e.action, e.object_type) for e in entries.order_by("id")] == [
        ("project.add_member", "experiments.project"),
        ("project.remove_member", "experiments.project"),
    ]


def test_delegating_release_management_with_guardian_is_audited(cast: Cast) -> None:
    lead = factories.make_user("lead")
    with acting_as(cast.mara, "admin"):
        assign_perm("experiments.change_project", lead, cast.lab.project)
        remove_perm("experiments.change_project", lead, cast.lab.project)
    actions_ = list(
        AuditEntry.objects.filter(action__in=["project.delegate", "project.undelegate"])
        .order_by("id")
        .values_list("action", "actor_name")
    )
    assert actions_ == [("project.delegate", "mara"), ("project.undelegate", "mara")]


# --- 3. separation of duties ---------------------------------------------------------------------


def expiry(days: int = 30) -> datetime:
    return timezone.now() + timedelta(days=days)


def test_nobody_grants_access_to_themselves_or_their_own_group(cast: Cast) -> None:
    with pytest.raises(ValidationError, match="yourself"):
        check_give_grant(user=cast.mara, project=cast.lab.project, expires_at=expiry(),
                         acting_user=cast.mara)  # fmt: skip
    partners = Group.objects.create(name="partners-acme")
    partners.user_set.add(cast.mara)
    with pytest.raises(ValidationError, match="group you belong to"):
        check_give_grant(group=partners, project=cast.lab.project, expires_at=expiry(),
                         acting_user=cast.mara)  # fmt: skip


def test_a_self_grant_on_the_grants_page_is_a_form_error(cast: Cast) -> None:
    page = login(cast.mara).post(
        reverse("grants"),
        {"user": "mara", "project": cast.lab.project.pk, "max_tier": Tier.PARTNERS,
         "expires_on": (timezone.now() + timedelta(days=10)).date().isoformat()},
    )  # fmt: skip
    assert page.status_code == 200 and b"cannot grant access to yourself" in page.content
    assert not Grant.objects.filter(user=cast.mara).exists()


def test_grants_have_a_maximum_lifetime(cast: Cast, settings: Any) -> None:
    settings.H3LAB_GRANT_MAX_DAYS = 90
    with pytest.raises(ValidationError, match="at most 90 days"):
        check_give_grant(user=cast.lab.charlie, project=cast.lab.project, expires_at=expiry(91),
                         acting_user=cast.mara)  # fmt: skip


def test_a_delegated_managers_grant_waits_for_a_release_managers_approval(cast: Cast) -> None:
    lead = factories.make_user("lead")
    assign_perm("experiments.change_project", lead, cast.lab.project)
    dana = factories.make_user("dana")
    factories.accept(dana, cast.agreement)
    finding = factories.make_finding(cast.lab.project, tier=Tier.PARTNERS)
    grant = check_give_grant(user=dana, project=cast.lab.project, expires_at=expiry(),
                             acting_user=lead)  # fmt: skip
    assert grant.approval == GrantApproval.PENDING
    assert not policy.visible_findings(dana).filter(pk=finding.pk).exists()
    assert not policy.partner_copy_findings(dana).exists()
    assert b"awaiting a release manager" in login(dana).get(reverse("my-access")).content
    assert b"awaiting a release manager" in login(cast.mara).get(reverse("grants")).content
    with pytest.raises(ValidationError):
        do_approve_grant(grant, approve=True, acting_user=lead)  # its giver
    response = login(cast.mara).post(reverse("grant-approve", args=[grant.pk]),
                                     {"decision": "approve"})  # fmt: skip
    assert response.status_code == 302
    assert policy.visible_findings(dana).filter(pk=finding.pk).exists()
    entry = AuditEntry.objects.get(action="grant.approve")
    assert entry.actor == cast.mara and entry.object_id == str(grant.pk)


def test_a_release_managers_own_grant_takes_effect_at_once(cast: Cast) -> None:
    grant = check_give_grant(user=cast.lab.charlie, project=cast.lab.project,
                             expires_at=expiry(), acting_user=cast.mara)  # fmt: skip
    assert grant.approval == GrantApproval.NOT_NEEDED


def test_a_grant_awaiting_acceptance_reads_the_same_on_every_page(cast: Cast) -> None:
    label = b"inactive until the agreement is accepted"
    assert label in login(cast.nick).get(reverse("my-access")).content
    grants_page = login(cast.mara).get(reverse("grants")).content
    assert label in grants_page


def pending_objection(cast: Cast) -> tuple[Finding, Vote]:
    f = factories.make_finding(cast.lab.project, tier=Tier.REVIEW)
    req = do_request_release(f, acting_user=cast.lab.alice)
    ola = factories.make_reviewer("ola")
    return f, do_vote(req, kind="object", rationale="too early", acting_user=ola)


def test_an_objection_is_withdrawn_by_its_author_only(cast: Cast) -> None:
    _, objection = pending_objection(cast)
    with pytest.raises(ValidationError):
        do_withdraw_objection(objection, acting_user=cast.mara)
    ola = objection.reviewer
    response = login(ola).post(reverse("objection-withdraw", args=[objection.pk]), {})
    assert response.status_code == 302
    objection.refresh_from_db()
    assert objection.resolved_at is not None
    assert AuditEntry.objects.filter(action="review.withdraw_objection").count() == 1


def test_one_release_manager_cannot_clear_an_objection(cast: Cast) -> None:
    _, objection = pending_objection(cast)
    with pytest.raises(ValidationError):
        do_clear_objection(objection, rationale="fine", acting_user=cast.mara)
    r = login(cast.mara).post(reverse("objection-clear", args=[objection.pk]), {"rationale": "x"})
    assert r.status_code == 404


def test_an_objection_is_cleared_by_a_quorum_of_other_board_members(
    cast: Cast, settings: Any
) -> None:
    settings.H3LAB_OBJECTION_QUORUM = 2
    _, objection = pending_objection(cast)
    assert do_clear_objection(objection, rationale="addressed", acting_user=cast.rita) is False
    with pytest.raises(ValidationError):  # once each
        do_clear_objection(objection, rationale="again", acting_user=cast.rita)
    ravi = factories.make_reviewer("ravi")
    assert do_clear_objection(objection, rationale="agreed", acting_user=ravi) is True
    objection.refresh_from_db()
    assert objection.resolution == "cleared by ravi, rita"


# --- 4. evidence integrity -----------------------------------------------------------------------


def test_destroying_evidence_a_partners_finding_cites_is_refused_naming_it(
    cast: Cast, tmp_path: Path
) -> None:
    checkpoint = artifact_of(cast, tmp_path)
    draft = factories.make_finding(cast.lab.project, title="Throwaway draft")
    draft.artifacts.add(checkpoint)
    cited = factories.make_finding(cast.lab.project, tier=Tier.PARTNERS, title="Shared result")
    cited.artifacts.add(checkpoint)
    with pytest.raises(ValidationError) as err:
        do_retract_finding(draft, reason="junk", destroy_data=True, destroy_reason="cleanup",
                           acting_user=cast.lab.alice)  # fmt: skip
    assert f"#{cited.pk} “Shared result”" in str(err.value)
    checkpoint.refresh_from_db()
    draft.refresh_from_db()
    assert checkpoint.shredded_at is None and draft.status != FindingStatus.RETRACTED
    # someone who cannot read the citing finding learns its number, not its title
    with pytest.raises(ValidationError) as err:
        do_retract_finding(draft, reason="junk", destroy_data=True, destroy_reason="cleanup",
                           acting_user=cast.lab.charlie)  # fmt: skip
    assert f"#{cited.pk}" in str(err.value) and "Shared result" not in str(err.value)


def test_evidence_cited_through_its_run_is_protected_too(cast: Cast, tmp_path: Path) -> None:
    checkpoint = artifact_of(cast, tmp_path)
    draft = factories.make_finding(cast.lab.project)
    draft.artifacts.add(checkpoint)
    factories.make_finding(cast.lab.project, tier=Tier.REVIEW).runs.add(checkpoint.run)
    with pytest.raises(ValidationError, match="cannot be destroyed"):
        do_retract_finding(draft, reason="junk", destroy_data=True, destroy_reason="x",
                           acting_user=cast.lab.alice)  # fmt: skip


def test_destroying_evidence_needs_a_confirmation_and_a_reason(cast: Cast, tmp_path: Path) -> None:
    checkpoint = artifact_of(cast, tmp_path)
    draft = factories.make_finding(cast.lab.project)
    draft.artifacts.add(checkpoint)
    alice = login(cast.lab.alice)
    alice.post(reverse("finding-retract", args=[draft.pk]),
               {"reason": "junk", "confirm": "1", "destroy_data": "1"})  # fmt: skip
    draft.refresh_from_db()
    assert draft.status != FindingStatus.RETRACTED
    with pytest.raises(ValidationError, match="why the evidence"):
        do_retract_finding(draft, reason="junk", destroy_data=True, acting_user=cast.lab.alice)


def test_the_run_page_offers_no_download_for_a_shredded_artifact(
    cast: Cast, tmp_path: Path
) -> None:
    checkpoint = artifact_of(cast, tmp_path)
    Artifact.objects.filter(pk=checkpoint.pk).update(shredded_at=timezone.now())
    page = login(cast.lab.alice).get(checkpoint.run.get_absolute_url()).content.decode()
    assert "shredded" in page and checkpoint.get_absolute_url() not in page


# --- 5 and 6. decisions in the policy, forms without a preselected answer -----------------------


def test_manageable_grants_is_the_one_spelling_of_grants_i_manage(cast: Cast) -> None:
    lead = factories.make_user("lead")
    assign_perm("experiments.change_project", lead, cast.lab.other_project)
    assert not policy.manageable_grants(lead).exists()
    assert set(policy.manageable_grants(cast.mara)) == set(Grant.objects.all())


def test_the_finding_page_reads_its_abilities_from_the_policy(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.TEAM)
    from disclosure.actions.release import do_request_review

    do_request_review(f, acting_user=cast.lab.alice)
    f.refresh_from_db()
    page = login(cast.mara).get(f.get_absolute_url())
    assert page.context["can"]["schedule"] is False  # nothing pending above the review tier
    pending_f, _ = pending_objection(cast)
    page = login(cast.mara).get(pending_f.get_absolute_url())
    assert page.context["can"]["schedule"] is True
    row = page.context["review"]["votes"][0]
    assert (row["can_withdraw"], row["can_clear"]) == (False, False)
    row = login(cast.rita).get(pending_f.get_absolute_url()).context["review"]["votes"][0]
    assert (row["can_withdraw"], row["can_clear"]) == (False, True)


def test_vote_and_assessment_forms_preselect_no_answer(cast: Cast) -> None:
    f, _ = pending_objection(cast)
    rita = login(cast.rita)
    page = rita.get(f.get_absolute_url()).content.decode()
    assert '<option value="" selected disabled>' in page
    assess = rita.get(reverse("finding-assess", args=[f.pk])).content.decode()
    assert assess.count('<option value="" selected>') == 2
    assert rita.post(reverse("finding-vote", args=[f.pk]), {"rationale": ""}).status_code == 302
    assert not f.votes.filter(reviewer=cast.rita).exists()

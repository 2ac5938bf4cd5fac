"""The review flow through the API, step by step as the web pages take it: each call goes
through the same action (audited) and the same policy check, and a refusal is a 404.

Who may call each endpoint, for every persona and tier, is in the permission matrices
(tests/test_permission_matrix.py, tests/test_api_permissions.py); these tests follow the flow
and check what each step changes.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from api import actions as api_actions
from disclosure.models import AuditEntry, Grant, ReleaseRequest, RequestState, Vote
from experiments.models import Finding, FindingStatus, RevisionState, Tier
from tests import factories
from tests.conftest import Cast, Lab
from tests.publishing import promote

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_rate_limit(settings: Any) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": None}
    cache.clear()


def api(user: User, scope: str = "manage") -> APIClient:
    client = APIClient()
    secret = api_actions.do_create_token(
        user=user, name="test", scope=scope, days=1, acting_user=user
    ).plaintext
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def actions_on(finding: Finding) -> list[str]:
    return list(AuditEntry.objects.filter(finding_id=finding.pk).values_list("action", flat=True))


def under_review(cast: Cast) -> tuple[Finding, int]:
    """A finding at the review tier, assessed, with a pending request for the partner tier."""
    finding = promote(cast, factories.make_finding(cast.lab.project), to=Tier.REVIEW)
    answer = api(cast.lab.alice).post(
        f"/api/v1/findings/{finding.pk}/request-release/", {"rationale": "partners"}, format="json"
    )
    assert answer.status_code == 201, answer.content
    return finding, answer.json()["id"]


def test_an_objection_is_raised_read_and_cleared_by_a_quorum_not_by_one_person(
    cast: Cast, settings: Any
) -> None:
    settings.H3LAB_OBJECTION_QUORUM = 2
    finding, request_id = under_review(cast)
    raised = api(cast.rita).post(
        f"/api/v1/findings/{finding.pk}/votes/",
        {"kind": "object", "rationale": "the probe code reveals the trick"},
        format="json",
    )
    assert raised.status_code == 201, raised.content
    objection = raised.json()["id"]
    votes = api(cast.lab.alice).get(f"/api/v1/findings/{finding.pk}/votes/").json()
    assert [(v["reviewer"], v["kind"]) for v in votes] == [("rita", "object")]
    requests = api(cast.mara).get(f"/api/v1/findings/{finding.pk}/release-requests/").json()
    (pending,) = [r for r in requests if r["id"] == request_id]
    assert any("objection" in reason for reason in pending["gate"]), pending["gate"]

    # a release manager alone cannot override it; nor can its author clear it
    assert (
        api(cast.mara)
        .post(f"/api/v1/objections/{objection}/clear/", {"rationale": "no"}, format="json")
        .status_code
        == 404
    )
    assert (
        api(cast.rita)
        .post(f"/api/v1/objections/{objection}/clear/", {"rationale": "mine"}, format="json")
        .status_code
        == 404
    )
    ravi, rosa = User.objects.get(username="ravi"), User.objects.get(username="rosa")
    first = api(ravi).post(
        f"/api/v1/objections/{objection}/clear/", {"rationale": "addressed"}, format="json"
    )
    assert first.status_code == 200, first.content
    assert first.json()["cleared"] is False
    assert first.json()["objection"]["quorum"] == 2
    assert [c["reviewer"] for c in first.json()["objection"]["clearances"]] == ["ravi"]
    again = api(ravi).post(
        f"/api/v1/objections/{objection}/clear/", {"rationale": "twice"}, format="json"
    )
    assert again.status_code == 404  # once each
    second = api(rosa).post(
        f"/api/v1/objections/{objection}/clear/", {"rationale": "agreed"}, format="json"
    )
    assert second.json()["cleared"] is True
    assert second.json()["objection"]["open"] is False
    assert "cleared by ravi, rosa" in second.json()["objection"]["resolution"]
    assert {"review.object", "review.clear_objection_vote", "review.resolve_objection"} <= set(
        actions_on(finding)
    )


def test_only_its_author_withdraws_an_objection(cast: Cast) -> None:
    finding, _ = under_review(cast)
    objection = (
        api(cast.rita)
        .post(
            f"/api/v1/findings/{finding.pk}/votes/",
            {"kind": "object", "rationale": "too early"},
            format="json",
        )
        .json()["id"]
    )
    url = f"/api/v1/objections/{objection}/withdraw/"
    for other in (cast.lab.alice, cast.mara, User.objects.get(username="ravi")):
        assert api(other).post(url, {"reason": "x"}, format="json").status_code == 404
    done = api(cast.rita).post(url, {"reason": "fixed in revision 2"}, format="json")
    assert done.status_code == 200, done.content
    assert done.json()["open"] is False
    assert done.json()["resolution"] == "withdrawn by its author: fixed in revision 2"
    assert "review.withdraw_objection" in actions_on(finding)
    # withdrawn: nothing left to withdraw or clear
    assert api(cast.rita).post(url, {}, format="json").status_code == 404


def test_an_objection_needs_a_rationale_and_a_reviewer_votes_once(cast: Cast) -> None:
    finding, _ = under_review(cast)
    url = f"/api/v1/findings/{finding.pk}/votes/"
    bare = api(cast.rita).post(url, {"kind": "object"}, format="json")
    assert bare.status_code == 400
    assert "rationale" in bare.content.decode()
    assert api(cast.rita).post(url, {"kind": "approve"}, format="json").status_code == 201
    twice = api(cast.rita).post(url, {"kind": "approve"}, format="json")
    assert twice.status_code == 400
    assert "already voted" in twice.content.decode()


def test_voting_without_a_pending_request_is_refused_on_content(cast: Cast) -> None:
    finding = promote(cast, factories.make_finding(cast.lab.project), to=Tier.REVIEW)
    answer = api(cast.rita).post(
        f"/api/v1/findings/{finding.pk}/votes/", {"kind": "approve"}, format="json"
    )
    assert answer.status_code == 400
    assert "No request is pending" in answer.content.decode()


def test_a_recused_reviewer_no_longer_sees_the_review(cast: Cast) -> None:
    finding, _ = under_review(cast)
    rita = api(cast.rita)
    assert rita.get(f"/api/v1/findings/{finding.pk}/votes/").status_code == 200
    recused = rita.post(
        f"/api/v1/findings/{finding.pk}/recuse/", {"reason": "I co-wrote it"}, format="json"
    )
    assert recused.status_code == 201, recused.content
    assert recused.json()["reviewer"] == "rita"
    assert rita.get(f"/api/v1/findings/{finding.pk}/votes/").status_code == 404
    assert rita.get(f"/api/v1/findings/{finding.pk}/assessments/").status_code == 404
    vote = rita.post(f"/api/v1/findings/{finding.pk}/votes/", {"kind": "approve"}, format="json")
    assert vote.status_code == 404
    assert "review.recuse" in actions_on(finding)


def test_a_release_manager_schedules_within_the_policy_s_embargo(cast: Cast) -> None:
    finding, request_id = under_review(cast)
    url = f"/api/v1/findings/{finding.pk}/schedule/"
    when = (timezone.now() + timedelta(days=3)).replace(microsecond=0)
    assert api(cast.lab.alice).post(url, {"embargo_until": when.isoformat()}).status_code == 404
    assert api(cast.rita).post(url, {"embargo_until": when.isoformat()}).status_code == 404
    answer = api(cast.mara).post(url, {"embargo_until": when.isoformat()}, format="json")
    assert answer.status_code == 200, answer.content
    assert answer.json()["state"] == RequestState.SCHEDULED
    request = ReleaseRequest.objects.get(pk=request_id)
    assert request.state == RequestState.SCHEDULED and request.embargo_until == when
    assert "release.schedule" in actions_on(finding)
    far = api(cast.mara).post(url, {"embargo_until": "9999-01-01T00:00:00Z"}, format="json")
    assert far.status_code == 400


def test_retraction_needs_a_reason_and_a_confirmation(cast: Cast) -> None:
    finding = factories.make_finding(cast.lab.project)
    url = f"/api/v1/findings/{finding.pk}/retract/"
    alice = api(cast.lab.alice)
    unconfirmed = alice.post(url, {"reason": "leak", "confirm": False}, format="json")
    assert unconfirmed.status_code == 400
    no_reason = alice.post(
        url, {"reason": "x", "confirm": True, "destroy_data": True}, format="json"
    )
    assert no_reason.status_code == 400 and "destroy_reason" in no_reason.content.decode()
    assert api(cast.lab.bob).post(url, {"reason": "x", "confirm": True}).status_code == 404
    done = alice.post(url, {"reason": "a data leak", "confirm": True}, format="json")
    assert done.status_code == 200, done.content
    assert done.json()["status"] == FindingStatus.RETRACTED
    assert done.json()["retraction_reason"] == "a data leak"
    assert "finding.retract" in actions_on(finding)
    # retracted: a second retraction finds nothing it may act on
    assert alice.post(url, {"reason": "again", "confirm": True}, format="json").status_code == 404


def test_a_revision_is_proposed_and_withdrawn_by_the_team(cast: Cast) -> None:
    finding = promote(cast, factories.make_finding(cast.lab.project), to=Tier.PARTNERS)
    alice = api(cast.lab.alice, "submit")
    url = f"/api/v1/findings/{finding.pk}/revisions/"
    body = {"title": "Corrected", "body": "the right step count", "note": "fix"}
    assert api(cast.rita).post(url, body, format="json").status_code == 404
    proposed = alice.post(url, body, format="json")
    assert proposed.status_code == 201, proposed.content
    assert proposed.json()["state"] == RevisionState.PENDING
    finding.refresh_from_db()
    assert finding.title != "Corrected"  # readers keep the approved text
    withdrawn = alice.post(f"{url}withdraw/", {"reason": "wrong file"}, format="json")
    assert withdrawn.json() == {
        "withdrawn": True,
        "number": proposed.json()["number"],
        "detail": f"Revision {proposed.json()['number']} withdrawn.",
    }
    assert not ReleaseRequest.objects.pending().filter(finding=finding).exists()
    nothing = alice.post(f"{url}withdraw/", {}, format="json")
    assert nothing.json()["withdrawn"] is False


def test_a_team_tier_finding_is_edited_in_place_not_revised(cast: Cast) -> None:
    finding = factories.make_finding(cast.lab.project)
    answer = api(cast.lab.alice).post(
        f"/api/v1/findings/{finding.pk}/revisions/", {"title": "t", "body": "b"}, format="json"
    )
    assert answer.status_code == 400
    assert "edited in place" in answer.content.decode()


def test_a_pending_grant_is_approved_by_another_release_manager(cast: Cast) -> None:
    dana = factories.make_user("dana")
    grant = factories.make_grant(
        dana, project=cast.lab.project, approval="pending", granted_by=cast.mara
    )
    url = f"/api/v1/grants/{grant.pk}/approve/"
    # its giver may not approve it (two people, not one)
    assert api(cast.mara).post(url, {"decision": "approve"}, format="json").status_code == 404
    max_ = factories.make_release_manager("max")
    approved = api(max_).post(url, {"decision": "approve", "note": "checked"}, format="json")
    assert approved.status_code == 200, approved.content
    assert approved.json()["approval"] == "approved"
    assert Grant.objects.get(pk=grant.pk).approval == "approved"
    assert AuditEntry.objects.filter(action="grant.approve").exists()
    # decided: nothing pending any more
    assert api(max_).post(url, {"decision": "decline"}, format="json").status_code == 404


def test_review_writes_need_the_manage_scope(cast: Cast) -> None:
    finding, _ = under_review(cast)
    for scope in ("read", "submit"):
        answer = api(cast.rita, scope).post(
            f"/api/v1/findings/{finding.pk}/votes/", {"kind": "approve"}, format="json"
        )
        assert answer.status_code == 403, scope
        assert (
            f"has the '{scope}' scope; this request needs 'manage'"
            in answer.json()["error"]["message"]
        )
    assert not Vote.objects.filter(finding=finding).exists()


def test_a_member_uploads_a_corpus_and_a_run_names_it(lab: Lab) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    url = f"/api/v1/projects/{lab.project.slug}/corpora/"
    alice = api(lab.alice, "submit")
    text = SimpleUploadedFile("../../etc/My Notes.txt", "the cat sat — on the mat\n".encode())
    answer = alice.post(url, {"file": text}, format="multipart")
    assert answer.status_code == 201, answer.content
    name = answer.json()["name"]
    assert name.startswith("my-notes-") and name.endswith(".txt")  # never the client's path
    assert answer.json()["size"] == len("the cat sat — on the mat\n".encode())
    assert [c["name"] for c in alice.get(url).json()] == [name]
    entry = AuditEntry.objects.get(action="corpus.upload")
    assert entry.new is not None and entry.new["name"] == name
    assert entry.actor_name == "alice"

    binary = SimpleUploadedFile("x.bin", b"\xff\xfe\x00")
    refused = alice.post(url, {"file": binary}, format="multipart")
    assert refused.status_code == 400 and "UTF-8" in refused.content.decode()
    assert api(lab.bob).get(url).status_code == 404  # not bob's project
    run = alice.post(
        "/api/v1/runs/",
        {
            "project": lab.project.slug,
            "config": {
                "preset": "h3",
                "task": {"name": "text", "path": name, "seq_len": 16},
                "train": {"steps": 5, "batch_size": 2},
            },
        },
        format="json",
    )
    assert run.status_code == 201, run.content
    assert Path(run.json()["config"]["task"]["path"]).name == name

"""The disclosure pages, driven through the browser-facing views."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from disclosure.actions.release import do_release_due, do_request_release
from disclosure.models import AuditEntry, Grant, Notification, ReleaseRequest
from experiments.models import Finding, Tier
from tests import factories
from tests.conftest import Cast, login

pytestmark = pytest.mark.django_db


def test_the_whole_flow_through_the_pages(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, title="Induction heads in H3")
    alice, rita, mara = login(cast.lab.alice), login(cast.rita), login(cast.mara)
    assert rita.get(f.get_absolute_url()).status_code == 404
    alice.post(reverse("finding-request-review", args=[f.pk]))
    assert rita.get(reverse("review-queue")).status_code == 200
    r = rita.post(
        reverse("finding-assess", args=[f.pk]),
        {
            "capability_uplift": 0,
            "alignment_value": 3,
            "rationale": "pure interpretability",
            "categories": "interpretability",
            "evidence_links": "https://arxiv.org/abs/2212.14052",
        },
    )
    assert r.status_code == 302
    alice.post(reverse("finding-request-release", args=[f.pk]), {"rationale": "partners asked"})
    assert b"Induction heads" in rita.get(reverse("review-queue")).content
    rita.post(reverse("finding-vote", args=[f.pk]), {"kind": "approve"})
    page = mara.get(f.get_absolute_url())
    assert b"pure interpretability" in page.content and b"Schedule release" in page.content
    soon = timezone.now() + timedelta(minutes=2)
    mara.post(reverse("finding-schedule", args=[f.pk]), {"embargo_until": f"{soon:%Y-%m-%dT%H:%M}"})
    assert ReleaseRequest.objects.get(finding=f, target_tier=2).state == "scheduled"
    assert do_release_due() == []  # not yet
    do_release_due(now=soon + timedelta(minutes=1))
    f.refresh_from_db()
    assert f.tier == Tier.PARTNERS
    # The collaborator sees the finding but not the deliberation about it.
    page = login(cast.carol).get(f.get_absolute_url())
    assert page.status_code == 200 and b"pure interpretability" not in page.content


def test_the_embargo_form_takes_local_time_and_stores_utc(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.REVIEW)
    req = do_request_release(f, acting_user=cast.lab.alice)
    login(cast.mara).post(
        reverse("finding-schedule", args=[f.pk]),
        {"embargo_until": "2031-06-01T14:00", "tz_offset": "120"},
    )
    req.refresh_from_db()
    assert req.embargo_until is not None
    assert req.embargo_until.isoformat() == "2031-06-01T12:00:00+00:00"


def test_reading_restricted_content_is_audited_and_public_content_is_not(cast: Cast) -> None:
    secret = factories.make_finding(cast.lab.project, tier=Tier.PARTNERS)
    public = factories.make_finding(cast.lab.project, tier=Tier.PUBLIC)
    carol = login(cast.carol)
    carol.get(secret.get_absolute_url(), REMOTE_ADDR="10.9.8.7")
    carol.get(public.get_absolute_url())
    views = AuditEntry.objects.filter(action="finding.view")
    assert [(e.finding_id, e.actor_name, e.ip) for e in views] == [(secret.pk, "carol", "10.9.8.7")]


def test_the_finding_list_costs_a_constant_number_of_queries(cast: Cast) -> None:
    for t in Tier:
        factories.make_finding(cast.lab.project, tier=t)
    carol = login(cast.carol)
    carol.get(reverse("findings"))  # warm the session
    for n in (4, 40):
        for _ in range(n):
            factories.make_finding(cast.lab.other_project, tier=Tier.PUBLIC)
        with CaptureQueriesContext(connection) as ctx:
            assert carol.get(reverse("findings")).status_code == 200
        # session, user, carol's roles (read once, with her unread-notification count: the
        # second-factor gate asks whether she needs one, the nav whether she reviews or
        # manages releases and how many notifications she has not read), then: count, page
        # (findings joined to projects)
        assert len(ctx.captured_queries) == 5


def test_release_managers_grant_and_revoke_access(cast: Cast) -> None:
    mara = login(cast.mara)
    dana = factories.make_user("dana")
    expires = (timezone.now() + timedelta(days=10)).date().isoformat()
    r = mara.post(
        reverse("grants"),
        {"user": "dana", "project": cast.lab.project.pk, "max_tier": 2, "expires_on": expires},
    )
    assert r.status_code == 302
    grant = Grant.objects.get(user=dana)
    assert Notification.objects.filter(user=dana, kind="grant_given").exists()
    assert b"dana" in mara.get(reverse("grants")).content
    mara.post(reverse("grant-revoke", args=[grant.pk]), {"reason": "done", "confirm": "1"})
    grant.refresh_from_db()
    assert grant.revoked_at is not None
    assert login(cast.carol).get(reverse("grants")).status_code == 404


def test_a_release_manager_cannot_grant_a_project_they_do_not_manage(cast: Cast) -> None:
    from guardian.shortcuts import assign_perm

    lead = factories.make_user("lead")
    assign_perm("experiments.change_project", lead, cast.lab.project)
    expires = (timezone.now() + timedelta(days=10)).date().isoformat()
    r = login(lead).post(
        reverse("grants"),
        {
            "user": "charlie",
            "project": cast.lab.other_project.pk,
            "max_tier": 2,
            "expires_on": expires,
        },
    )
    assert r.status_code == 200 and not Grant.objects.filter(user=cast.lab.charlie).exists()


def test_collaborators_accept_the_current_agreement_on_my_access(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.PARTNERS)
    nick = login(cast.nick)
    page = nick.get(reverse("my-access"))
    assert b"inactive until the agreement is accepted" in page.content
    assert nick.get(f.get_absolute_url()).status_code == 404
    nick.post(reverse("agreement-accept"), {"version": 1, "confirm": "on"})  # stale version
    assert nick.get(f.get_absolute_url()).status_code == 404
    nick.post(reverse("agreement-accept"), {"version": 2, "confirm": "on"})
    assert nick.get(f.get_absolute_url()).status_code == 200


def test_the_inbox_shows_an_unread_count_and_marks_read(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.REVIEW)
    do_request_release(f, acting_user=cast.lab.alice)
    rita = login(cast.rita)
    assert b'aria-label="1 unread"' in rita.get(reverse("home")).content
    assert b"Review requested" in rita.get(reverse("inbox")).content
    rita.post(reverse("inbox"))
    assert b"unread" not in rita.get(reverse("inbox")).content


def test_the_audit_page_filters_shows_who_has_seen_a_finding_and_exports_csv(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.PARTNERS)
    login(cast.carol).get(f.get_absolute_url())
    login(cast.rita).get(f.get_absolute_url())
    mara = login(cast.mara)
    page = mara.get(reverse("audit"), {"finding": f.pk})
    assert page.status_code == 200
    assert [s["actor_name"] for s in page.context["seen_by"]] == ["carol", "rita"]
    export = mara.get(reverse("audit-export"), {"action": "finding.view"})
    assert isinstance(export, StreamingHttpResponse)
    csv = b"".join(export.streaming_content)
    assert csv.count(b"finding.view") == 2 and csv.startswith(b"id,created_at")
    assert AuditEntry.objects.filter(action="audit.export", actor_name="mara").exists()
    assert login(cast.rita).get(reverse("audit")).status_code == 404


def test_recusing_hides_the_finding_from_the_reviewer(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.REVIEW)
    rita = login(cast.rita)
    rita.post(reverse("finding-recuse", args=[f.pk]), {"reason": "co-author"})
    assert rita.get(f.get_absolute_url()).status_code == 404


def test_objections_are_cleared_by_other_board_members_not_by_a_release_manager(
    cast: Cast,
) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.REVIEW)
    do_request_release(f, acting_user=cast.lab.alice)
    login(cast.rita).post(
        reverse("finding-vote", args=[f.pk]), {"kind": "object", "rationale": "too early"}
    )
    vote = ReleaseRequest.objects.get(finding=f).votes.get()
    for who in (cast.lab.alice, cast.mara, cast.rita):  # team, release manager, the author
        r = login(who).post(reverse("objection-clear", args=[vote.pk]), {"rationale": "x"})
        assert r.status_code == 404
    login(cast.rex).post(reverse("objection-clear", args=[vote.pk]), {"rationale": "addressed"})
    vote.refresh_from_db()
    assert vote.resolved_at is not None and vote.resolution == "cleared by rex"


def test_members_retract_and_others_get_the_tombstone(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.PUBLIC, title="Secret sauce")
    login(cast.lab.alice).post(
        reverse("finding-retract", args=[f.pk]), {"reason": "bug in eval", "confirm": "1"}
    )
    f = Finding.objects.get(pk=f.pk)
    assert f.is_retracted
    r = login(cast.lab.charlie).get(f.get_absolute_url())
    assert r.status_code == 410 and b"bug in eval" in r.content and b"Secret sauce" not in r.content
    assert b"Secret sauce" not in login(cast.lab.charlie).get(reverse("findings")).content

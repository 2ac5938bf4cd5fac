"""The leak test: a finding's words reach exactly the people the policy lets read it.

Every finding of the world below carries unique markers in its title and body. The world is
driven through the real actions (review, votes, grants given and revoked, an edit, a
retraction, a partner copy), so the audit log, inboxes and the mail outbox fill up the way
they do in use. Then every persona renders every page of the site that takes no argument,
every finding's page and API detail, every export and grant page, the inbox, the audit page
and its CSV. A marker may appear in a response only where :func:`disclosure.policy.visible_findings`
holds its finding for that viewer *now*; email, which leaves the lab, carries no marker of a
finding that is not public.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from guardian.shortcuts import assign_perm

from disclosure import policy
from disclosure.actions.exports import do_request_export
from disclosure.actions.grants import do_give_grant, do_revoke_grant
from disclosure.actions.release import do_request_release, do_request_review
from disclosure.actions.retraction import do_retract_finding
from disclosure.actions.review import do_assess_finding, do_vote
from disclosure.models import Export, Recusal
from experiments.actions.findings import do_edit_finding
from experiments.models import Finding, Tier
from tests import factories
from tests.conftest import Cast, login

pytestmark = pytest.mark.django_db

# URL names that take no argument but are not pages to read (they act, or log out).
NOT_PAGES = {"logout", "agreement-accept", "export-public", "export-partner", "run-new"}
SKIP_PREFIXES = ("admin/",)


@dataclass
class Planted:
    finding: Finding
    markers: list[str] = field(default_factory=list)


def plant(cast: Cast, key: str, *, tier: int = Tier.TEAM) -> Planted:
    title, body = f"LEAK{key}TITLE", f"LEAK{key}BODY"
    finding = factories.make_finding(cast.lab.project, title=title, body=body, tier=tier)
    return Planted(finding, [title, body])


def cast_extra(cast: Cast) -> Any:
    """``pat``: a collaborator whose only access was one per-finding grant (revoked later)."""
    pat = factories.make_user("pat")
    factories.accept(pat, cast.agreement)
    return pat


def world_and_personas(
    cast: Cast, capture_on_commit: Any
) -> tuple[dict[str, Planted], dict[str, Any]]:
    """The world (built with on-commit callbacks run, as in a request) and every persona,
    ``dana`` the delegated release manager included."""
    delegated = factories.make_user("dana")
    assign_perm("experiments.change_project", delegated, cast.lab.project)
    with capture_on_commit(execute=True):
        world = build_world(cast)
    return world, personas(cast, delegated)


def personas(cast: Cast, delegated: Any) -> dict[str, Any]:
    lab = cast.lab
    return {
        "anonymous": None,
        "outsider": lab.charlie,
        "other_member": lab.bob,
        "member": lab.alice,
        "reviewer": cast.rita,
        "recused_reviewer": cast.rex,
        "collaborator": cast.carol,
        "expired_grant": cast.erin,
        "unaccepted_agreement": cast.nick,
        "release_manager": cast.mara,
        "delegated_manager": delegated,
        "revoked_partner": User.objects.get(username="pat"),
    }


def build_world(cast: Cast) -> dict[str, Planted]:
    """Findings at every tier and state, moved there through the actions."""
    alice, mara = cast.lab.alice, cast.mara
    world = {key: plant(cast, key) for key in ("T0", "T1", "T2", "T3", "RETR", "GRANTX")}
    # review tier through the review request (notices go to the board)
    for key in ("T1", "T2", "T3", "RETR", "GRANTX"):
        do_request_review(world[key].finding, acting_user=alice)
    # a request above review: reviewers and release managers are told; rita assesses and votes
    t1 = world["T1"].finding
    t1.refresh_from_db()
    request = do_request_release(t1, rationale="ready", acting_user=alice)
    do_assess_finding(
        t1, capability_uplift=0, alignment_value=2, rationale="fine", acting_user=cast.rita
    )
    do_vote(request, kind="approve", acting_user=cast.rita)
    Recusal.objects.create(finding=t1, reviewer=cast.rex, reason="co-author")
    # partners and public: set the tier directly after review (the release flow is tested
    # elsewhere); what matters here is what each page shows about them
    Finding.objects.filter(pk__in=[world[k].finding.pk for k in ("T2", "RETR")]).update(
        tier=Tier.PARTNERS
    )
    Finding.objects.filter(pk=world["T3"].finding.pk).update(tier=Tier.PUBLIC)
    # a retracted partners-tier finding, with notices to its past readers
    do_retract_finding(world["RETR"].finding, reason="wrong", acting_user=alice)
    # a per-finding grant to pat (no other access), a partner copy made for pat while it
    # stood, then the grant revoked: pat must lose the title everywhere, the copy's page too
    grantx = world["GRANTX"].finding
    Finding.objects.filter(pk=grantx.pk).update(tier=Tier.PARTNERS)
    pat = cast_extra(cast)
    grant = do_give_grant(
        user=pat, finding=grantx, expires_at=timezone.now() + timedelta(days=5), acting_user=mara
    )
    do_request_export(
        kind="partner",
        findings=[grantx],
        project=None,
        recipient=pat,
        acting_user=mara,
        enqueue=False,
    )
    do_revoke_grant(grant, reason="ended", acting_user=mara)
    # grants that name findings their grantee cannot read: erin's lapsed one, and carol's
    # partners-tier grant on a finding still at the review tier
    factories.make_grant(cast.erin, finding=grantx, days=-1)
    factories.make_grant(cast.carol, finding=t1)
    # an edit of the team-tier finding (the audit entry records the new body)
    t0 = world["T0"].finding
    do_edit_finding(t0, title=t0.title, body="LEAKT0EDITED", acting_user=alice)
    world["T0"].markers.append("LEAKT0EDITED")
    # a partner copy for carol of the partners-tier finding, requested by mara
    do_request_export(
        kind="partner",
        findings=[world["T2"].finding],
        project=None,
        recipient=cast.carol,
        acting_user=mara,
        enqueue=False,
    )
    return world


def page_urls(world: dict[str, Planted]) -> list[str]:
    urls: list[str] = []

    def walk(patterns: list[Any], prefix: str) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if route.startswith(SKIP_PREFIXES):
                continue
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route)
            elif (
                isinstance(p, URLPattern)
                and p.name
                and p.name not in NOT_PAGES
                and not re.search(r"<\w+:?\w*>", route)
            ):
                urls.append(reverse(p.name))

    walk(get_resolver().url_patterns, "")
    for planted in world.values():
        pk = planted.finding.pk
        urls += [
            reverse("finding", kwargs={"pk": pk}),
            reverse("api-finding-detail", kwargs={"pk": pk}),
            reverse("api-finding-assessments", kwargs={"pk": pk}),
            reverse("api-finding-release-requests", kwargs={"pk": pk}),
        ]
    # searches name part of a marker only: the search box echoes its query
    for part in ("T0TITLE", "T1TITLE", "GRANTXTITLE", "RETRTITLE", "BODY"):
        urls.append(reverse("findings") + f"?q={part}")
        urls.append(reverse("api-finding-list") + f"?q={part}")
    for export in Export.objects.all():
        urls.append(reverse("export", kwargs={"pk": export.pk}))
        urls.append(reverse("api-export-detail", kwargs={"pk": export.pk}))
    return sorted(set(urls))


def body_of(response: Any) -> str:
    if hasattr(response, "streaming_content"):
        return b"".join(response.streaming_content).decode("utf-8", "replace")
    content: bytes = response.content
    return content.decode("utf-8", "replace")


@pytest.fixture(autouse=True)
def _no_api_rate_limit(settings: Any) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": None}


@pytest.mark.slow
def test_every_marker_appears_only_where_the_policy_lets_the_viewer_read_it(
    cast: Cast, django_capture_on_commit_callbacks: Any
) -> None:
    world, users = world_and_personas(cast, django_capture_on_commit_callbacks)
    urls = page_urls(world)
    leaks: list[str] = []
    for persona, user in users.items():
        client = login(user) if user is not None else Client()
        readable = set(policy.visible_findings(user).values_list("pk", flat=True))
        for url in urls:
            response = client.get(url)
            if response.status_code >= 500:
                leaks.append(f"{persona} {url}: {response.status_code}")
                continue
            text = body_of(response)
            for key, planted in world.items():
                if planted.finding.pk in readable:
                    continue
                for marker in planted.markers:
                    if marker in text:
                        leaks.append(f"{persona} sees {marker} ({key}) at {url}")
    for message in mail.outbox:
        text = f"{message.subject}\n{message.body}"
        for key, planted in world.items():
            if planted.finding.tier == Tier.PUBLIC and not planted.finding.is_retracted:
                continue
            planted.finding.refresh_from_db()
            for marker in planted.markers:
                if marker in text:
                    leaks.append(f"email to {message.to} carries {marker} ({key})")
    assert not leaks, "\n".join(sorted(set(leaks)))


def test_the_leak_test_would_catch_a_leak(cast: Cast) -> None:
    """Guard against a vacuous pass: the team-tier title is on the team's own finding page,
    and the same page is refused to an outsider."""
    world = {"T0": plant(cast, "T0")}
    url = reverse("finding", kwargs={"pk": world["T0"].finding.pk})
    assert "LEAKT0TITLE" in body_of(login(cast.lab.alice).get(url))
    assert "LEAKT0TITLE" not in body_of(login(cast.lab.charlie).get(url))

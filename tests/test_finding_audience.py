""" "Who can see this": the finding's team and release managers get the list of people who can
read it and why; the list agrees with the policy for every persona at every tier; nobody else
gets the page."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from disclosure import policy
from experiments.models import Finding, Tier
from experiments.users import User
from tests import factories
from tests.conftest import Cast, login
from tests.publishing import promote

pytestmark = pytest.mark.django_db


def finding_at(cast: Cast, tier: int) -> Finding:
    finding = factories.make_finding(
        cast.lab.project, title="Recall circuit", created_by=cast.lab.alice
    )
    if tier > Tier.TEAM:
        promote(cast, finding, to=tier)
    cast.recuse(finding)
    return finding


def everyone(cast: Cast) -> list[User]:
    lab = cast.lab
    return [lab.alice, lab.bob, lab.charlie, cast.rita, cast.rex, cast.mara, cast.carol,
            cast.erin, cast.nick]  # fmt: skip


@pytest.mark.parametrize("tier", [Tier.TEAM, Tier.REVIEW, Tier.PARTNERS, Tier.PUBLIC])
def test_the_audience_is_exactly_who_the_policy_lets_read(cast: Cast, tier: int) -> None:
    finding = finding_at(cast, tier)
    listed = {r.user.username for r in policy.audience(finding).readers}
    for user in everyone(cast):
        can_read = policy.visible_findings(user).filter(pk=finding.pk).exists()
        # at the public tier everyone reads it, and the list names who reads it by another route
        assert (user.username in listed) == (
            (can_read and tier < Tier.PUBLIC)
            or (tier == Tier.PUBLIC and user.username in ("alice", "rita", "mara", "carol"))
        ), user
    assert "rex" not in listed  # recused
    assert "erin" not in listed and "nick" not in listed  # expired grant; old agreement
    assert ("carol" in listed) == (tier >= Tier.PARTNERS)
    assert policy.audience(finding).public == (tier == Tier.PUBLIC)


def test_routes_say_why(cast: Cast) -> None:
    finding = finding_at(cast, Tier.PARTNERS)
    routes = {r.user.username: r.route for r in policy.audience(finding).readers}
    assert routes["alice"] == "team"
    assert routes["carol"] == "grant"
    assert routes["rita"] != "grant" and routes["mara"] != "grant"


def test_the_page_lists_readers_for_the_team_and_release_managers(cast: Cast) -> None:
    finding = finding_at(cast, Tier.REVIEW)
    url = reverse("finding-audience", args=[finding.pk])
    for user in (cast.lab.alice, cast.mara):
        page = login(user).get(url)
        assert page.status_code == 200
        text = page.content.decode()
        assert "rita" in text and "on the project's team" in text
        assert "carol" not in text  # partners tier not reached
    assert url in login(cast.lab.alice).get(finding.get_absolute_url()).content.decode()


def test_the_page_is_missing_for_everyone_else(cast: Cast) -> None:
    finding = finding_at(cast, Tier.PUBLIC)
    url = reverse("finding-audience", args=[finding.pk])
    for user in (cast.rita, cast.carol, cast.lab.bob, cast.lab.charlie):
        assert login(user).get(url).status_code == 404
    assert Client().get(url).status_code == 302  # sign in first
    assert url not in login(cast.rita).get(finding.get_absolute_url()).content.decode()

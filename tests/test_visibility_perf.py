"""The finding list stays cheap as the data grows: two queries (a capped count and the page),
whatever the persona, and a count that stops at 1,000 so it does not grow with the data."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from disclosure.pagination import CappedPaginator
from experiments.models import Finding, FindingStatus, Project, Tier
from tests import factories
from tests.conftest import Cast, login

pytestmark = pytest.mark.django_db

# Every signed-in page renders the disclosure nav: its unread-notification count is read with
# the roles (see tests/test_views_experiments.py).
NAV_QUERIES = 0
# The user's roles, read once per request (disclosure.policy.roles) and shared by the
# second-factor gate, the nav and the policy.
ROLES_QUERIES = 1
# A reviewer's or release manager's verified session loads its second-factor device.
DEVICE_QUERIES = {"alice": 0, "rex": 1, "carol": 0, "nick": 0, "mara": 1}


def make_public_findings(project: Project, n: int) -> None:
    now = timezone.now()
    Finding.objects.bulk_create(
        Finding(
            project=project,
            title=f"public {i}",
            body="b",
            tier=Tier.PUBLIC,
            status=FindingStatus.RELEASED,
            created_at=now,
        )
        for i in range(n)
    )


@pytest.mark.parametrize("persona", ["alice", "rex", "carol", "nick", "mara"])
def test_the_finding_list_is_two_queries_for_every_persona(
    cast: Cast, persona: str, django_assert_num_queries: Any
) -> None:
    for t in Tier:
        factories.make_finding(cast.lab.project, tier=t)
    make_public_findings(cast.lab.other_project, 60)
    user = cast.lab.alice if persona == "alice" else getattr(cast, persona)
    client = login(user)
    client.get(reverse("findings"))  # warm the session
    # 1 session, 2 user, 3 the capped count, 4 the page (findings joined to their project);
    # plus the nav's, the roles and the device. The user's groups, clearance, grants,
    # agreement and recusals are subqueries of 3 and 4, not queries of their own.
    with django_assert_num_queries(4 + NAV_QUERIES + ROLES_QUERIES + DEVICE_QUERIES[persona]):
        response = client.get(reverse("findings"))
    assert len(response.context["findings"]) == 50


def test_the_count_is_exact_below_the_cap() -> None:
    paginator = CappedPaginator(Finding.objects.all(), 50, cap=1000)
    assert paginator.get_page(1).paginator is paginator
    assert (paginator.count, paginator.is_capped, paginator.count_label) == (0, False, "0")


def test_past_the_cap_the_count_says_more_than_and_every_page_is_reachable(lab: Any) -> None:
    make_public_findings(lab.project, 130)
    findings = Finding.objects.all()

    first = CappedPaginator(findings, 50, cap=100)
    page = first.get_page(1)
    assert (first.is_capped, first.count_label, first.num_pages_label) == (True, "100+", "2+")
    assert page.has_next() is True
    assert len(page.object_list) == 50

    # Page 3 lies past the cap: the window slides with the requested page, so it opens in full
    # and the count is exact again once the end is within reach.
    third = CappedPaginator(findings, 50, cap=100)
    page = third.get_page(3)
    assert page.number == 3
    assert len(page.object_list) == 30
    assert (third.is_capped, third.count_label, third.num_pages_label) == (False, "130", "3")
    assert page.has_next() is False


def test_the_finding_list_shows_a_capped_count(cast: Cast) -> None:
    make_public_findings(cast.lab.project, 1001)
    response = login(cast.lab.charlie).get(reverse("findings"))
    page = response.content.decode()
    assert '<span class="count">1,000+</span>' in page
    assert "page 1 of 20+" in page
    assert len(response.context["findings"]) == 50

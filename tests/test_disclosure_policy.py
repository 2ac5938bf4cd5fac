"""Visibility by tier and persona, decided in one SQL statement by disclosure.policy."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.http import Http404
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from disclosure import policy
from disclosure.actions.agreements import do_accept_agreement, do_publish_agreement
from disclosure.actions.grants import do_revoke_grant
from disclosure.actions.retraction import do_retract_finding
from experiments.models import Finding, Tier
from tests import factories
from tests.conftest import Cast, Lab

pytestmark = pytest.mark.django_db

ALL = {Tier.TEAM, Tier.REVIEW, Tier.PARTNERS, Tier.PUBLIC}


def tiers_seen(user: Any, findings: dict[Tier, Finding]) -> set[int]:
    ids = set(policy.visible_findings(user).values_list("pk", flat=True))
    return {t for t, f in findings.items() if f.pk in ids}


@pytest.fixture
def findings(cast: Cast) -> dict[Tier, Finding]:
    found = {t: factories.make_finding(cast.lab.project, tier=t) for t in Tier}
    cast.recuse(found[Tier.REVIEW])
    cast.recuse(found[Tier.PARTNERS])
    return found


def test_each_persona_sees_exactly_its_tiers(cast: Cast, findings: dict[Tier, Finding]) -> None:
    from django.contrib.auth.models import AnonymousUser

    lab = cast.lab
    expected = {
        "anonymous": (AnonymousUser(), {Tier.PUBLIC}),
        "outsider": (lab.charlie, {Tier.PUBLIC}),
        "other team": (lab.bob, {Tier.PUBLIC}),
        "team": (lab.alice, ALL),
        "reviewer": (cast.rita, {Tier.REVIEW, Tier.PARTNERS, Tier.PUBLIC}),
        "recused reviewer": (cast.rex, {Tier.PUBLIC}),
        "collaborator": (cast.carol, {Tier.PARTNERS, Tier.PUBLIC}),
        "expired grant": (cast.erin, {Tier.PUBLIC}),
        "old agreement": (cast.nick, {Tier.PUBLIC}),
        "release manager": (cast.mara, {Tier.REVIEW, Tier.PARTNERS, Tier.PUBLIC}),
    }
    for name, (user, tiers) in expected.items():
        assert tiers_seen(user, findings) == tiers, name


def test_a_global_view_permission_does_not_widen_the_list(
    cast: Cast, findings: dict[Tier, Finding]
) -> None:
    perm = Permission.objects.get(codename="view_finding")
    cast.lab.charlie.user_permissions.add(perm)
    Group.objects.get(name="review-board").permissions.add(perm)
    assert tiers_seen(cast.lab.charlie, findings) == {Tier.PUBLIC}
    assert tiers_seen(cast.rex, findings) == {Tier.PUBLIC}


def test_accepting_the_new_agreement_restores_access(
    cast: Cast, findings: dict[Tier, Finding]
) -> None:
    do_accept_agreement(cast.nick, cast.agreement, acting_user=cast.nick)
    assert tiers_seen(cast.nick, findings) == {Tier.PARTNERS, Tier.PUBLIC}


def test_a_future_agreement_version_does_not_cut_access_before_it_takes_effect(
    cast: Cast, findings: dict[Tier, Finding]
) -> None:
    factories.make_agreement(3, hours_ago=-24)
    assert tiers_seen(cast.carol, findings) == {Tier.PARTNERS, Tier.PUBLIC}


def test_publishing_a_new_agreement_requires_re_acceptance(
    cast: Cast, findings: dict[Tier, Finding]
) -> None:
    do_publish_agreement(title="Agreement", text="v3", acting_user=cast.mara)
    assert tiers_seen(cast.carol, findings) == {Tier.PUBLIC}
    assert cast.carol.notifications.filter(kind="agreement").exists()


def test_no_agreement_in_force_means_grants_give_nothing(lab: Lab, db: None) -> None:
    carol = factories.make_user("carol")
    project = lab.project
    factories.make_agreement(1, hours_ago=-1)  # not yet in force
    factories.make_grant(carol, project=project)
    f = factories.make_finding(project, tier=Tier.PARTNERS)
    assert not policy.visible_findings(carol).filter(pk=f.pk).exists()


def test_revoking_a_grant_takes_effect_on_the_next_request(
    cast: Cast, findings: dict[Tier, Finding]
) -> None:
    from disclosure.models import Grant

    grant = Grant.objects.get(user=cast.carol)
    do_revoke_grant(grant, reason="project ended", acting_user=cast.mara)
    assert tiers_seen(cast.carol, findings) == {Tier.PUBLIC}


def test_group_and_single_finding_grants(cast: Cast, findings: dict[Tier, Finding]) -> None:
    partners = Group.objects.create(name="partner-lab")
    dana, fred = factories.make_user("dana"), factories.make_user("fred")
    partners.user_set.add(dana)
    for u in (dana, fred):
        factories.accept(u, cast.agreement)
    factories.make_grant(group=partners, project=cast.lab.project)
    factories.make_grant(fred, finding=findings[Tier.PARTNERS])
    other = factories.make_finding(cast.lab.project, tier=Tier.PARTNERS)
    assert tiers_seen(dana, findings) == {Tier.PARTNERS, Tier.PUBLIC}
    assert policy.visible_findings(dana).filter(pk=other.pk).exists()
    assert tiers_seen(fred, findings) == {Tier.PARTNERS, Tier.PUBLIC}
    assert not policy.visible_findings(fred).filter(pk=other.pk).exists()


def test_a_review_tier_grant_reaches_the_review_tier(
    cast: Cast, findings: dict[Tier, Finding]
) -> None:
    expert = factories.make_user("expert")
    factories.accept(expert, cast.agreement)
    factories.make_grant(expert, project=cast.lab.project, max_tier=Tier.REVIEW)
    assert tiers_seen(expert, findings) == {Tier.REVIEW, Tier.PARTNERS, Tier.PUBLIC}


def test_retracted_findings_leave_everyones_list_but_the_teams(
    cast: Cast, findings: dict[Tier, Finding]
) -> None:
    do_retract_finding(findings[Tier.PUBLIC], reason="wrong", acting_user=cast.mara)
    from django.contrib.auth.models import AnonymousUser

    assert tiers_seen(AnonymousUser(), findings) == set()
    assert tiers_seen(cast.carol, findings) == {Tier.PARTNERS}
    assert tiers_seen(cast.lab.alice, findings) == ALL
    _finding, readable = policy.get_finding_or_tombstone_or_404(
        AnonymousUser(), findings[Tier.PUBLIC].pk
    )
    assert readable is False


def test_single_object_access_raises_404_for_missing_and_forbidden_alike(
    cast: Cast, findings: dict[Tier, Finding]
) -> None:
    with pytest.raises(Http404) as forbidden:
        policy.get_finding_or_404(cast.lab.bob, findings[Tier.TEAM].pk)
    with pytest.raises(Http404) as missing:
        policy.get_finding_or_404(cast.lab.bob, 999_999)
    assert str(forbidden.value) == str(missing.value)


def test_the_list_costs_two_queries_whatever_the_persona(
    cast: Cast, findings: dict[Tier, Finding]
) -> None:
    for user in (cast.lab.alice, cast.rita, cast.rex, cast.carol, cast.nick, cast.mara):
        with CaptureQueriesContext(connection) as ctx:
            qs = policy.visible_findings(user).select_related("project")
            list(qs[:50])  # 1: the page, with its project
            qs.count()  # 2: the count
        assert len(ctx.captured_queries) == 2, user


def test_delegated_release_management_is_a_guardian_object_permission(cast: Cast) -> None:
    from guardian.shortcuts import assign_perm

    lead = factories.make_user("lead")
    assert policy.can_manage_releases(lead, cast.lab.project) is False
    assign_perm("experiments.change_project", lead, cast.lab.project)
    assert policy.can_manage_releases(lead, cast.lab.project) is True
    assert policy.can_manage_releases(lead, cast.lab.other_project) is False
    assert list(policy.manageable_projects(lead)) == [cast.lab.project]


def test_reviewers_cannot_review_their_own_teams_findings(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.REVIEW)
    factories.add_to_group(cast.lab.alice, "review-board")
    assert policy.can_review(cast.lab.alice, f) is False
    assert policy.can_review(cast.rita, f) is True
    _ = timezone.now()

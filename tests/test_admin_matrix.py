"""The admin joins the permission matrix: every admin changelist and change page × every
persona × every tier.

Each persona is made staff holding every model permission of the two governed apps (the
strongest a non-superuser can be in the admin). The admin must still show no more than the
policy: a change page of an object the persona may not see answers no content (Django's
"doesn't exist" redirect to the admin index), and no changelist names the world's finding or
run unless the persona may see them. No governed model offers an add or change form (saves go
through the actions), and a signed-in user who is not staff is sent to the admin login.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db.models import Model
from django.urls import reverse

from disclosure.models import AuditEntry, Grant, ReleaseRequest, Vote
from experiments.models import Artifact, Experiment, Finding, MetricPoint, Project, Run, Tier
from tests import factories
from tests.conftest import Cast, login
from tests.test_permission_matrix import PERSONAS, World, build_world, sees

pytestmark = pytest.mark.django_db

GOVERNED_APPS = ("experiments", "disclosure")


def admin_models() -> list[type[Model]]:
    return [m for m in admin.site._registry if m._meta.app_label in GOVERNED_APPS]


def make_staff(user: Any) -> None:
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    perms = Permission.objects.filter(content_type__app_label__in=GOVERNED_APPS)
    user.user_permissions.add(*perms)


def url(model: type[Model], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def objects_of(world: World) -> dict[type[Model], tuple[Model, bool]]:
    """The world's governed objects, each with "may this persona see it" as a rule."""
    request = ReleaseRequest.objects.get(finding=world.finding)
    return {
        Finding: (world.finding, True),
        Run: (world.run, False),
        Artifact: (world.artifact, True),
        Project: (world.cast.lab.project, False),
        Experiment: (world.run.experiment, False),
        ReleaseRequest: (request, True),
        Vote: (world.objection, True),
    }


def seen(persona: str, tier: int, follows_finding: bool) -> bool:
    """Finding-scoped rows follow the finding; team working material is the team's."""
    return sees(persona, tier) if follows_finding else persona == "member"


@pytest.mark.parametrize("tier", list(Tier), ids=[t.label for t in Tier])
def test_admin_pages_show_nothing_beyond_the_policy(cast: Cast, tier: int, tmp_path: Path) -> None:
    world = build_world(cast, tier, tmp_path)
    factories.add_metrics(world.run, "hidden_metric_name", [0.5])
    objects = objects_of(world)
    failures: list[str] = []
    for persona in PERSONAS:
        user = world.users[persona]
        if user is None:
            continue
        make_staff(user)
        client = login(user)
        for model in admin_models():
            page = client.get(url(model, "changelist"))
            if page.status_code == 403:  # e.g. grants, for someone who manages no project
                continue
            if page.status_code != 200:
                failures.append(f"{persona} {model.__name__} changelist: {page.status_code}")
                continue
            content = page.content.decode()
            if world.finding.title in content and not sees(persona, tier):
                failures.append(f"{persona} {model.__name__} changelist names the finding")
            if "hidden_metric_name" in content and persona != "member":
                failures.append(f"{persona} {model.__name__} changelist names the run's metric")
            if client.get(url(model, "add")).status_code not in (403, 302) and model not in (
                _agreement_model(),
            ):
                failures.append(f"{persona} {model.__name__}: an add form is offered")
        for model, (obj, follows_finding) in objects.items():
            page = client.get(url(model, "change", obj.pk))
            allowed = seen(persona, tier, follows_finding)
            shown = page.status_code == 200
            if shown != allowed:
                failures.append(
                    f"{persona} {model.__name__} change page: "
                    f"{'allowed' if allowed else 'denied'} expected, got {page.status_code}"
                )
            if shown and b'type="submit"' in page.content and b'name="_save"' in page.content:
                failures.append(f"{persona} {model.__name__} change page offers a save")
        post = client.post(url(Finding, "change", world.finding.pk), {"title": "changed"})
        if post.status_code not in (302, 403):
            failures.append(f"{persona} Finding change POST: {post.status_code}")
    world.finding.refresh_from_db()
    assert world.finding.title == "The finding under test"
    assert not failures, "\n".join(failures)


def _agreement_model() -> type[Model]:
    from disclosure.models import AgreementVersion

    return AgreementVersion


def test_a_signed_in_user_who_is_not_staff_is_sent_to_the_admin_login(cast: Cast) -> None:
    client = login(cast.mara)
    for model in admin_models():
        page = client.get(url(model, "changelist"))
        assert page.status_code == 302 and page["Location"].startswith(reverse("admin:login"))


def test_a_project_filter_lists_only_projects_the_staff_user_may_see(cast: Cast) -> None:
    make_staff(cast.lab.alice)
    factories.make_run(cast.lab.project)
    factories.make_run(cast.lab.other_project)
    page = login(cast.lab.alice).get(url(Experiment, "changelist"))
    assert b"Induction" in page.content
    assert b"Recall" not in page.content


def test_grants_in_the_admin_are_the_grants_the_user_manages(cast: Cast) -> None:
    from guardian.shortcuts import assign_perm

    lead = factories.make_user("lead")
    make_staff(lead)
    assign_perm("experiments.change_project", lead, cast.lab.other_project)
    page = login(lead).get(url(Grant, "changelist"))
    assert b"carol" not in page.content  # carol's grant covers induction, not lead's project
    make_staff(cast.mara)
    assert b"carol" in login(cast.mara).get(url(Grant, "changelist")).content


def test_the_audit_log_in_the_admin_is_for_those_who_may_read_the_audit_log(cast: Cast) -> None:
    make_staff(cast.lab.alice)
    entry = AuditEntry.objects.first()
    assert entry is not None
    assert login(cast.lab.alice).get(url(AuditEntry, "change", entry.pk)).status_code == 302
    make_staff(cast.mara)
    assert login(cast.mara).get(url(AuditEntry, "change", entry.pk)).status_code == 200


def test_metric_points_stay_with_their_team(cast: Cast) -> None:
    run = factories.make_run(cast.lab.project)
    factories.add_metrics(run, "secret_loss", [1.0])
    point = MetricPoint.objects.get(run=run)
    make_staff(cast.lab.bob)
    bob = login(cast.lab.bob)
    assert b"secret_loss" not in bob.get(url(MetricPoint, "changelist")).content
    assert bob.get(url(MetricPoint, "change", point.pk)).status_code == 302

"""Lab administration without a shell: lab admins create projects, change teams and delegate a
project's release management from the Lab pages, the API and management commands; a project's
delegates change its team; everyone else gets 404; every change is audited; bad input is a form
or field error, never a 500."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from api import actions as api_actions
from disclosure import policy
from disclosure.actions.delegation import do_delegate_release_management
from disclosure.models import AuditEntry
from experiments.models import Project
from experiments.users import User
from tests import factories
from tests.conftest import Lab, login

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(lab: Lab) -> User:
    return factories.make_user("ada", is_superuser=True, is_staff=True)


@pytest.fixture(autouse=True)
def _no_rate_limit(settings: Any) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": None}
    cache.clear()


def actions_on(project: Project | None = None) -> list[str]:
    entries = AuditEntry.objects.order_by("pk")
    if project is not None:
        entries = entries.filter(object_type="experiments.project", object_id=str(project.pk))
    return list(entries.values_list("action", flat=True))


def token_client(user: User) -> APIClient:
    made = api_actions.do_create_token(
        user=user, name="t", scope="manage", days=1, acting_user=user
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {made.plaintext}")
    return client


# --- web ----------------------------------------------------------------------------------------


def test_a_lab_admin_creates_a_project_and_builds_its_team_from_the_pages(
    admin: User, lab: Lab
) -> None:
    c = login(admin)
    assert c.get(reverse("lab")).status_code == 200
    r = c.post(reverse("lab"), {"slug": "probes", "name": "Recall probes", "description": ""})
    assert r.status_code == 302 and r["Location"] == reverse("project-team", args=["probes"])
    project = Project.objects.get(slug="probes")
    team_url = reverse("project-team", args=["probes"])
    assert c.post(team_url, {"op": "add", "username": "bob"}).status_code == 302
    assert policy.is_member(lab.bob, project)
    assert c.post(team_url, {"op": "delegate", "username": "charlie"}).status_code == 302
    assert policy.can_manage_releases(lab.charlie, project)
    assert policy.requires_second_factor(lab.charlie)
    page = c.get(team_url).content.decode()
    assert "bob" in page and "charlie" in page
    assert c.post(team_url, {"op": "undelegate", "username": "charlie"}).status_code == 302
    assert c.post(team_url, {"op": "remove", "username": "bob"}).status_code == 302
    assert not policy.is_member(lab.bob, project)
    assert not policy.can_manage_releases(lab.charlie, project)
    assert actions_on(project) == [
        "project.create",
        "project.add_member",
        "project.delegate",
        "project.undelegate",
        "project.remove_member",
    ]
    on_project = AuditEntry.objects.filter(object_id=str(project.pk), action__startswith="project.")
    assert set(on_project.values_list("actor_id", flat=True)) == {admin.pk}


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"slug": "Bad Slug", "name": "x"}, "slug", "lowercase letters"),
        ({"slug": "induction", "name": "x"}, "slug", "already exists"),
        ({"slug": "fine", "name": "   "}, "name", "required"),
    ],
)
def test_bad_project_input_is_a_form_error_and_creates_nothing(
    admin: User, data: dict[str, str], field: str, message: str
) -> None:
    before = Project.objects.count()
    r = login(admin).post(reverse("lab"), data)
    assert r.status_code == 200
    assert message in " ".join(r.context["form"].errors[field])
    assert Project.objects.count() == before


def test_team_changes_name_unknown_or_wrong_users_as_form_errors(admin: User, lab: Lab) -> None:
    c = login(admin)
    url = reverse("project-team", args=[lab.project.slug])
    r = c.post(url, {"op": "add", "username": "nobody-here"})
    assert r.status_code == 200 and "no active account" in r.content.decode()
    r = c.post(url, {"op": "add", "username": "alice"})
    assert "already on the team" in r.content.decode()
    r = c.post(url, {"op": "remove", "username": "bob"})
    assert "is not on the team" in r.content.decode()


def test_a_delegate_changes_the_team_but_cannot_delegate(admin: User, lab: Lab) -> None:
    do_delegate_release_management(lab.project, lab.bob, acting_user=admin)
    c = login(lab.bob)
    url = reverse("project-team", args=[lab.project.slug])
    assert c.get(url).status_code == 200
    assert c.post(url, {"op": "add", "username": "charlie"}).status_code == 302
    assert policy.is_member(lab.charlie, lab.project)
    assert c.post(url, {"op": "delegate", "username": "charlie"}).status_code == 404
    assert not policy.can_manage_releases(lab.charlie, lab.project)
    assert c.get(reverse("lab")).status_code == 404
    # his own team's page (a project he is a member of, not a delegate of) is not his to change
    assert c.get(reverse("project-team", args=[lab.other_project.slug])).status_code == 404


@pytest.mark.parametrize("who", ["alice", "bob", "charlie"])
def test_members_and_outsiders_get_404_on_lab_pages(lab: Lab, who: str) -> None:
    c = login(getattr(lab, who))
    assert c.get(reverse("lab")).status_code == 404
    assert c.post(reverse("lab"), {"slug": "x", "name": "x"}).status_code == 404
    url = reverse("project-team", args=[lab.project.slug])
    assert c.get(url).status_code == 404
    assert c.post(url, {"op": "add", "username": "charlie"}).status_code == 404
    assert not Project.objects.filter(slug="x").exists()
    assert not policy.is_member(lab.charlie, lab.project)


def test_the_lab_link_is_shown_to_lab_admins_only(admin: User, lab: Lab) -> None:
    assert reverse("lab") in login(admin).get(reverse("home")).content.decode()
    assert reverse("lab") not in login(lab.alice).get(reverse("home")).content.decode()


def test_anonymous_visitors_are_sent_to_sign_in(lab: Lab) -> None:
    r = Client().get(reverse("lab"))
    assert r.status_code == 302 and r["Location"].startswith(reverse("login"))


# --- API ----------------------------------------------------------------------------------------


def test_the_api_creates_projects_and_manages_teams_and_delegates(admin: User, lab: Lab) -> None:
    api = token_client(admin)
    r = api.post("/api/v1/projects/", {"slug": "api-made", "name": "API made"}, format="json")
    assert r.status_code == 201 and r.json()["slug"] == "api-made"
    team = "/api/v1/projects/api-made/team/"
    r = api.post(team, {"username": "bob"}, format="json")
    assert r.status_code == 201 and r.json()["members"] == ["bob"]
    r = api.post("/api/v1/projects/api-made/delegates/", {"username": "alice"}, format="json")
    assert r.status_code == 201 and r.json()["delegates"] == ["alice"]
    assert api.get(team).json() == {
        "project": "api-made",
        "members": ["bob"],
        "delegates": ["alice"],
    }
    assert api.delete("/api/v1/projects/api-made/delegates/alice/").json()["delegates"] == []
    assert api.delete(f"{team}bob/").json()["members"] == []
    r = api.post(team, {"username": "ghost"}, format="json")
    assert r.status_code == 400 and "no active account" in str(r.json())
    r = api.post("/api/v1/projects/", {"slug": "api-made", "name": "again"}, format="json")
    assert r.status_code == 400 and "already exists" in str(r.json())
    project = Project.objects.get(slug="api-made")
    assert actions_on(project) == [
        "project.create",
        "project.add_member",
        "project.delegate",
        "project.undelegate",
        "project.remove_member",
    ]


def test_the_api_refuses_non_admins_as_missing(lab: Lab) -> None:
    api = token_client(lab.alice)  # a member of the project, not an admin or a delegate
    assert (
        api.post("/api/v1/projects/", {"slug": "x", "name": "x"}, format="json").status_code == 404
    )
    team = f"/api/v1/projects/{lab.project.slug}/team/"
    assert api.get(team).status_code == 404
    assert api.post(team, {"username": "charlie"}, format="json").status_code == 404
    missing = api.get("/api/v1/projects/no-such-project/team/")
    assert missing.status_code == 404 and missing.json() == api.get(team).json()


def test_a_delegate_manages_the_team_through_the_api_but_not_delegation(
    admin: User, lab: Lab
) -> None:
    do_delegate_release_management(lab.project, lab.bob, acting_user=admin)
    api = token_client(lab.bob)
    team = f"/api/v1/projects/{lab.project.slug}/team/"
    assert api.post(team, {"username": "charlie"}, format="json").status_code == 201
    r = api.post(f"/api/v1/projects/{lab.project.slug}/delegates/", {"username": "charlie"})
    assert r.status_code == 404


# --- management commands ------------------------------------------------------------------------


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_commands_create_a_project_change_its_team_and_delegate(admin: User, lab: Lab) -> None:
    out = run("create_project", "cli-made", "CLI made", "--member", "alice", "--actor", "ada")
    assert "created project cli-made" in out
    project = Project.objects.get(slug="cli-made")
    assert policy.is_member(lab.alice, project)
    assert "bob" in run("project_team", "cli-made", "add", "bob", "charlie")
    assert "team of cli-made: alice, bob, charlie" in run("project_team", "cli-made")
    run("project_team", "cli-made", "remove", "charlie")
    assert "now manages" in run("delegate_releases", "cli-made", "bob")
    assert policy.can_manage_releases(lab.bob, project)
    assert "no longer manages" in run("delegate_releases", "cli-made", "bob", "--revoke")
    assert actions_on(project)[:2] == ["project.create", "project.add_member"]
    assert AuditEntry.objects.filter(action="project.create", actor=admin).count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create_project", "induction", "Again"), "already exists"),
        (("create_project", "ok-slug", "Name", "--member", "ghost"), "no active account"),
        (("project_team", "no-such", "add", "bob"), "no project is called"),
        (("delegate_releases", "induction", "ghost"), "no active account"),
        (("create_project", "x", "X", "--actor", "alice"), "only a lab admin"),
    ],
)
def test_commands_fail_with_a_clear_message_and_change_nothing(
    lab: Lab, args: tuple[str, ...], message: str
) -> None:
    before = (Project.objects.count(), AuditEntry.objects.count())
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert (Project.objects.count(), AuditEntry.objects.count()) == before


def test_create_token_prints_a_working_token_once(lab: Lab) -> None:
    token = run("create_token", "alice", "nightly CI", "--scope", "submit", "--quiet").strip()
    r = APIClient().get("/api/v1/me/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert r.status_code == 200 and r.json()["username"] == "alice"
    assert AuditEntry.objects.filter(action="api_token.create").exists()
    with pytest.raises(CommandError, match="between 1 and"):
        run("create_token", "alice", "too long", "--days", "100000")

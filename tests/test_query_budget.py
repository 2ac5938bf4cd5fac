"""Every page and API list the load benchmark drives (``manage.py bench_web``) runs a constant
number of SQL queries, whatever the persona and however many rows stand behind it: the same
budget with one of everything and with several (votes, objections, clearances, assessments,
recusals, revisions, evidence, runs, metric points)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from disclosure.models import Assessment, ObjectionClearance, Recusal, ReleaseRequest, Vote
from experiments.models import Finding, Run, Tier
from experiments.storage import store_file
from tests import factories
from tests.conftest import Cast, login

pytestmark = pytest.mark.django_db


@dataclass
class World:
    finding: Finding
    run: Run
    partners: Finding
    public: Finding


def build_world(cast: Cast, size: int, tmp_path: Path) -> World:
    """A review-tier finding with a pending step to partners; ``size`` of each related row."""
    lab = cast.lab
    tmp_path.mkdir(parents=True, exist_ok=True)
    finding = factories.make_finding(lab.project, tier=Tier.REVIEW, title="Under test")
    runs = [factories.make_run(lab.project, user=lab.alice) for _ in range(size)]
    for i, run in enumerate(runs):
        src = tmp_path / f"probe{i}.json"
        src.write_text('{"accuracy": 0.97}')
        artifact = store_file(run, src, f"probe{i}.json")
        artifact.save()
        finding.runs.add(run)
        finding.artifacts.add(artifact)
        factories.add_metrics(run, "loss", [1.0 / (j + 1) for j in range(10 * size)])
    for _ in range(size * 3):
        factories.make_run(lab.project, user=lab.alice)
    request = ReleaseRequest.objects.create(
        finding=finding, from_tier=Tier.REVIEW, target_tier=Tier.PARTNERS
    )
    Recusal.objects.create(finding=finding, reviewer=cast.rex, reason="co-author")
    for i in range(size):
        ola = factories.make_reviewer(f"ola{size}-{i}")
        Assessment.objects.create(
            finding=finding, reviewer=ola, capability_uplift=1, alignment_value=1, rationale="r"
        )
        vote = Vote.objects.create(
            request=request, finding=finding, reviewer=ola, kind="object", rationale="early"
        )
        for j in range(size):
            clearer = factories.make_reviewer(f"clear{size}-{i}-{j}")
            ObjectionClearance.objects.create(objection=vote, reviewer=clearer)
    for i in range(size * 5):
        factories.make_finding(lab.project, tier=Tier(i % 4))
    # What partners and the public read: a finding at each tier citing the same evidence.
    shown = {}
    for tier in (Tier.PARTNERS, Tier.PUBLIC):
        shown[tier] = factories.make_finding(lab.project, tier=tier, title=f"At {tier.label}")
        shown[tier].runs.add(*runs)
        shown[tier].artifacts.add(*finding.artifacts.all())
    return World(
        finding=finding, run=runs[0], partners=shown[Tier.PARTNERS], public=shown[Tier.PUBLIC]
    )


PERSONAS = [
    "member",
    "reviewer",
    "recused_reviewer",
    "collaborator",
    "release_manager",
    "admin",
    "anonymous",
]

# Statements per request, after the session is warm (SAVEPOINT/RELEASE, an artefact of the test
# transaction, are not counted: under autocommit they are not sent). Every signed-in page starts
# with 1 session, 2 user, 3 the second-factor device (reviewers, release managers, admins) or
# nothing, and 4 the user's roles (disclosure.policy.roles: groups, team projects, delegations,
# recusals and the nav's unread-notification count in one UNION ALL). Anonymous readers run
# none of these. The budget is the most any persona runs.
BUDGET = {
    # + capped count, page (visibility is subqueries of both)
    "finding list": 6,
    # + finding, audit (head, insert, head update) for a restricted one, pending request,
    # votes, their clearances (one prefetch), the page's other lists in one statement
    # (disclosure.pagerows: decisions, metric snapshots, assessments, recusals, timeline, the
    # gate's current rules and the finding's dependencies), revisions, evidence (runs,
    # artifacts). Issue 17's goal: 15.
    "finding page": 15,
    # + finding, audit (3), pending request, the lists (one statement), revisions,
    # evidence (2)
    "partners finding page": 13,
    # the same without the audit (a public finding's view is not audited)
    "public finding page": 10,
    # + count, page of runs joined to project, experiment and creator
    "runs list": 7,
    # + run, artifacts
    "run page": 7,
    # + run, metric points after the cursor
    "progress": 5,
    # API (session auth): + count, page
    "api findings": 8,
    "api runs": 5,
}


def persona(cast: Cast, name: str) -> Any:
    if name == "admin":
        return factories.make_user("ada", is_superuser=True, is_staff=True)
    return {
        "member": cast.lab.alice,
        "reviewer": cast.rita,
        "recused_reviewer": cast.rex,
        "collaborator": cast.carol,
        "release_manager": cast.mara,
    }[name]


def client_for(cast: Cast, name: str) -> Any:
    return Client() if name == "anonymous" else login(persona(cast, name))


def pages(world: World) -> dict[str, str]:
    return {
        "finding list": reverse("findings"),
        "finding page": reverse("finding", args=[world.finding.pk]),
        "partners finding page": reverse("finding", args=[world.partners.pk]),
        "public finding page": reverse("finding", args=[world.public.pk]),
        "runs list": reverse("runs"),
        "run page": reverse("run", args=[world.run.pk]),
        "progress": reverse("run-progress", args=[world.run.pk]),
        "api findings": reverse("api-finding-list"),
        "api runs": reverse("api-run-list"),
    }


def statements(ctx: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in ctx.captured_queries if "SAVEPOINT" not in q["sql"]]


def main_table(sql: str) -> str:
    """The table of a statement's own FROM (not one in a subquery of its select list)."""
    depth = 0
    for i, ch in enumerate(sql):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and sql.startswith(" FROM ", i):
            return sql[i + 6 :].split(" ", 1)[0]
    return ""


def measure(client: Any, url: str) -> tuple[int, list[str]]:
    client.get(url)  # warm: session and caches
    with CaptureQueriesContext(connection) as ctx:
        status = client.get(url).status_code
    return status, statements(ctx)


@pytest.mark.parametrize("who", PERSONAS)
def test_every_page_runs_the_same_queries_with_one_or_four_of_everything(
    cast: Cast, who: str, tmp_path: Path
) -> None:
    client = client_for(cast, who)
    counts: dict[int, dict[str, int]] = {}
    for size in (1, 4):
        world = build_world(cast, size, tmp_path / str(size))
        counts[size] = {}
        for name, url in pages(world).items():
            status, sql = measure(client, url)
            counts[size][name] = len(sql)
            if status == 200:
                assert len(sql) <= BUDGET[name], (who, size, name, sql)
    assert counts[1] == counts[4]


@pytest.mark.parametrize("who", ["reviewer", "release_manager", "member"])
def test_the_finding_page_reads_the_users_roles_once(cast: Cast, who: str, tmp_path: Path) -> None:
    world = build_world(cast, 2, tmp_path)
    status, sql = measure(login(persona(cast, who)), reverse("finding", args=[world.finding.pk]))
    assert status == 200
    assert sum(s.startswith("SELECT 'g'") for s in sql) == 1
    # Apart from it the group tables are read only inside other statements (visibility
    # subqueries of the finding, evidence and artifact reads), never on their own.
    others = [s for s in sql if " FROM " in s and not s.startswith("SELECT 'g'")]
    main_tables = {main_table(s) for s in others}
    assert not main_tables & {'"auth_group"', '"auth_user_groups"'}, main_tables


def test_roles_are_not_remembered_from_one_request_to_the_next(cast: Cast) -> None:
    from disclosure import policy

    client = login(cast.mara)
    assert client.get(reverse("review-queue")).status_code == 200
    cast.mara.groups.clear()
    assert client.get(reverse("review-queue")).status_code == 404
    assert policy.is_release_manager(cast.mara) is False


def test_a_membership_change_during_a_request_is_seen_at_once(cast: Cast) -> None:
    from django.conf import settings

    from disclosure import policy

    charlie = cast.lab.charlie
    with policy.roles_once_per_request():
        assert policy.is_reviewer(charlie) is False
        factories.add_to_group(charlie, settings.H3LAB_REVIEW_BOARD_GROUP)
        assert policy.is_reviewer(charlie) is True
        assert policy.is_member(charlie, cast.lab.project) is False
        cast.lab.project.group.user_set.add(charlie)
        assert policy.is_member(charlie, cast.lab.project) is True

"""The finding list's fast path equals the policy it stands for.

:func:`disclosure.policy.visible_findings` fills a WHERE clause compiled once per process from
:func:`disclosure.policy.finding_visibility_q` with the user's id and the time, instead of
building and compiling the Q on every request. Here, for every persona of the leak test's
world (findings at every tier, grants given, expired and revoked, a recusal, a retraction, an
unaccepted agreement), the two must be the same statement with the same parameters, and read
the same rows.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.db.models import Q
from django.utils import timezone

from disclosure import policy
from experiments.models import Finding
from tests import factories
from tests.conftest import Cast
from tests.test_leaks import world_and_personas

pytestmark = pytest.mark.django_db


def where_of(q: Any) -> tuple[str, list[Any]]:
    """The WHERE clause Django compiles for a Q (or a where node of Finding's table)."""
    query = Finding.objects.filter(q).query if isinstance(q, Q) else None
    node = query.where if query is not None else q
    compiler = (query or Finding.objects.all().query).get_compiler(connection=connection)
    sql, params = node.as_sql(compiler, connection)
    return sql, list(params)


def test_the_fast_path_is_the_policys_own_statement_for_every_persona(
    cast: Cast, django_capture_on_commit_callbacks: Any
) -> None:
    world, users = world_and_personas(cast, django_capture_on_commit_callbacks)
    users["lab_admin"] = factories.make_user("root", is_superuser=True)
    fast_paths = 0
    for name, user in users.items():
        now = timezone.now()
        reference = Finding.objects.filter(policy.finding_visibility_q(user, now=now))
        fast = policy.visible_findings(user, now=now)
        assert set(fast.values_list("pk", flat=True)) == set(
            reference.values_list("pk", flat=True)
        ), name
        if user is None or user.is_superuser:
            continue
        fast_paths += 1
        sql, params = where_of(policy.finding_visibility_q(user, now=now))
        # … and compiles to that clause alone (parenthesised), not "(…) = true".
        assert where_of(fast.query.where) == (f"({sql})", params), name
        assert params.count(user.pk) >= 3  # team, clearance, grants: each the user's own id
    assert fast_paths == 11
    # Not a vacuous comparison: the personas read different sets of the world's findings.
    readers = {n: frozenset(policy.visible_findings(u).values_list("pk", flat=True))
               for n, u in users.items()}  # fmt: skip
    assert len(set(readers.values())) >= 4, readers
    assert any(planted.finding.pk in readers["collaborator"] for planted in world.values())


def test_the_time_is_bound_per_request_not_compiled_in(cast: Cast) -> None:
    finding = factories.make_finding(cast.lab.project, tier=2)
    factories.make_grant(cast.carol, finding=finding, days=1)
    assert policy.visible_findings(cast.carol).filter(pk=finding.pk).exists()
    # The template was compiled (and cached) above; a grant that has lapsed by now must not
    # be read with the time of that compilation.
    from disclosure.models import Grant

    Grant.objects.filter(user=cast.carol).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert not policy.visible_findings(cast.carol).filter(pk=finding.pk).exists()


def test_as_a_subquery_it_reads_its_own_rows_not_the_outer_querys(cast: Cast) -> None:
    from experiments.models import Project

    team = factories.make_finding(cast.lab.project)
    public = factories.make_finding(cast.lab.project, tier=3)
    other = factories.make_project("other")
    for user in (cast.carol, cast.lab.alice, cast.rita, cast.lab.charlie):
        direct = set(policy.visible_findings(user).values_list("pk", flat=True))
        assert (public.pk in direct, team.pk in direct) == (True, user == cast.lab.alice)
        # Inside another statement Django renames the finding table (U0 …). Where the outer
        # statement reads findings too, a clause that kept the table's own name would be
        # evaluated on the outer rows; where it does not, it would not compile.
        inner = policy.visible_findings(user)
        nested = Finding.objects.filter(pk__in=inner.values("pk"))
        sql = str(nested.query)
        if " U0 " in sql:  # renamed: the clause follows the new name
            assert 'U0."tier"' in sql
        assert set(nested.values_list("pk", flat=True)) == direct, user
        projects = set(Project.objects.filter(pk__in=inner.values("project_id")))
        assert projects == {cast.lab.project} and other not in projects
        via_join = set(Project.objects.filter(findings__in=inner).values_list("pk", flat=True))
        assert via_join == {cast.lab.project.pk}
        cites = Finding.artifacts.through.objects.filter(finding__in=inner)
        assert set(cites.values_list("finding_id", flat=True)) <= direct

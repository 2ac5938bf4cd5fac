"""The finding page reads several lists in one statement (``disclosure.pagerows``): every row
comes back as the ORM would have read it — same rows, same order, every field with its
Python type (datetimes aware, JSON decoded, booleans), joined rows included, a slice kept."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection, models
from django.test.utils import CaptureQueriesContext

from disclosure import audit, pagerows
from disclosure.gates import current_rules_query
from disclosure.models import (
    Assessment,
    AuditEntry,
    Recusal,
    ReleaseDecision,
    ReleasePolicy,
    ReleaseRule,
)
from experiments.models import Finding, MetricSnapshot, Tier
from tests import factories
from tests.conftest import Lab

pytestmark = pytest.mark.django_db


def fields(obj: models.Model) -> dict[str, Any]:
    return {
        f.attname: getattr(obj, f.attname)
        for f in obj._meta.concrete_fields
        if f.attname != "password"
    }


def same(got: list[Any], want: list[Any], related: tuple[str, ...] = ()) -> None:
    assert [fields(o) for o in got] == [fields(o) for o in want]
    for name in related:
        rel_got = [getattr(o, name) for o in got]
        rel_want = [getattr(o, name) for o in want]
        assert [r and fields(r) for r in rel_got] == [r and fields(r) for r in rel_want]


@pytest.fixture
def finding(lab: Lab) -> Finding:
    finding = factories.make_finding(lab.project, tier=Tier.REVIEW, title="Read at once")
    deps = [factories.make_finding(lab.project, tier=Tier.PARTNERS) for _ in range(3)]
    finding.depends_on.add(*deps)
    run = factories.make_run(lab.project, user=lab.alice)
    for name, value in [("loss", 1.0), ("acc", 0.125), ("acc", 2.5e-9)]:
        MetricSnapshot.objects.create(finding=finding, run=run, name=name, step=3, value=value)
    rita, ron = factories.make_reviewer("rita2"), factories.make_reviewer("ron2")
    Assessment.objects.create(
        finding=finding,
        reviewer=rita,
        capability_uplift=2,
        alignment_value=1,
        categories=["probing", "steering"],
        rationale="ünïcode \"quoted\" 'text'\nnew line",
    )
    Assessment.objects.create(
        finding=finding, reviewer=ron, capability_uplift=0, alignment_value=3, rationale="r"
    )
    Recusal.objects.create(finding=finding, reviewer=ron, reason="co-author")
    policy = ReleasePolicy.objects.create(version=999, notes="strict")
    ReleaseRule.objects.create(policy=policy, target_tier=Tier.PUBLIC, approvals_required=3)
    ReleaseRule.objects.create(policy=policy, target_tier=Tier.PARTNERS, blocked=True)
    ReleaseDecision.objects.create(
        finding=finding, from_tier=0, to_tier=1, policy=policy, rationale="first"
    )
    ReleaseDecision.objects.create(
        finding=finding,
        from_tier=1,
        to_tier=2,
        policy=policy,
        decided_by=lab.alice,
        decided_at=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        approvals=[{"reviewer": "rita2", "at": "2026-01-01"}],
        rationale="second",
    )
    for i in range(60):
        audit.record(lab.alice, "finding.edit", finding, new={"n": i, "reasons": ["a", "b"]})
    audit.record(lab.alice, "finding.view", finding)
    return finding


def lists(finding: Finding) -> dict[str, pagerows.Rows]:
    return {
        # "depends_on" and "decisions" are also names of the finding's relations
        "depends_on": pagerows.Rows(finding.depends_on.all()),
        "decisions": pagerows.Rows(finding.decisions.all(), related=("decided_by", "policy")),
        "snapshots": pagerows.Rows(
            MetricSnapshot.objects.filter(finding=finding).order_by("run_id", "name")
        ),
        "assessments": pagerows.Rows(finding.assessments.all(), related=("reviewer",)),
        "recusals": pagerows.Rows(finding.recusals.all(), related=("reviewer",)),
        "rules": pagerows.Rows(current_rules_query(), related=("policy",)),
        "timeline": pagerows.Rows(
            AuditEntry.objects.filter(finding_id=finding.pk)
            .exclude(action="finding.view")
            .order_by("-id")[:50]
        ),
        "nothing": pagerows.Rows(Recusal.objects.filter(pk=-1)),
    }


def test_every_list_reads_as_the_orm_reads_it_in_one_statement(finding: Finding) -> None:
    with CaptureQueriesContext(connection) as ctx:
        got = pagerows.read(lists(finding))
    assert len([q for q in ctx.captured_queries if "SAVEPOINT" not in q["sql"]]) == 1

    same(got["depends_on"], list(finding.depends_on.all()))
    same(
        got["decisions"],
        list(finding.decisions.select_related("decided_by", "policy")),
        related=("decided_by", "policy"),
    )
    same(
        got["snapshots"],
        list(MetricSnapshot.objects.filter(finding=finding).order_by("run_id", "name")),
    )
    same(
        got["assessments"],
        list(finding.assessments.select_related("reviewer")),
        related=("reviewer",),
    )
    same(got["recusals"], list(finding.recusals.select_related("reviewer")), related=("reviewer",))
    same(got["rules"], list(current_rules_query().select_related("policy")), related=("policy",))
    timeline = list(
        AuditEntry.objects.filter(finding_id=finding.pk)
        .exclude(action="finding.view")
        .order_by("-id")[:50]
    )
    assert len(timeline) == 50
    same(got["timeline"], timeline)
    assert got["nothing"] == []


def test_rows_carry_python_types(finding: Finding) -> None:
    got = pagerows.read(lists(finding))
    # ordered by decided_at: the back-dated decision first
    decision, first = got["decisions"]
    assert decision.decided_at == datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    assert decision.approvals == [{"reviewer": "rita2", "at": "2026-01-01"}]
    assert decision.decided_by is not None and decision.decided_by.username == "alice"
    assert first.decided_by is None and first.rationale == "first"
    assert [r.blocked for r in got["rules"]] == [True, False]
    assert got["timeline"][0].new == {"n": 59, "reasons": ["a", "b"]}
    assert got["assessments"][0].categories == ["probing", "steering"]
    assert got["assessments"][0].get_capability_uplift_display()
    assert str(got["recusals"][0].reviewer) == "ron2"
    assert sorted(s.value for s in got["snapshots"]) == [2.5e-9, 0.125, 1.0]
    # a joined user's password hash is never carried into a page
    assert "password" in got["recusals"][0].reviewer.get_deferred_fields()


def test_no_lists_no_statement(finding: Finding) -> None:
    with CaptureQueriesContext(connection) as ctx:
        assert pagerows.read({}) == {}
    assert ctx.captured_queries == []

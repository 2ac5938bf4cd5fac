"""Dual-use review, gated and embargoed release by the scheduler, retraction, grant expiry."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.exceptions import ValidationError
from django.test import Client
from django.utils import timezone

from disclosure import audit
from disclosure.actions.grants import do_warn_expiring_grants
from disclosure.actions.release import (
    check_schedule_release,
    do_release_due,
    do_request_release,
    do_request_review,
)
from disclosure.actions.retraction import do_retract_finding
from disclosure.actions.review import do_assess_finding, do_vote, do_withdraw_objection
from disclosure.gates import gate_reasons
from disclosure.models import (
    AuditEntry,
    ImmutableError,
    Notification,
    ReleaseDecision,
    ReleaseRequest,
)
from experiments.models import Finding, FindingStatus, Tier
from h3lab import jobs
from tests import factories
from tests.conftest import Cast

pytestmark = pytest.mark.django_db


def at_review(cast: Cast) -> Finding:
    f = factories.make_finding(cast.lab.project, title="Induction heads in H3")
    do_request_review(f, acting_user=cast.lab.alice)
    f.refresh_from_db()
    return f


def assess(cast: Cast, f: Finding, uplift: int = 0) -> None:
    do_assess_finding(
        f, capability_uplift=uplift, alignment_value=2, rationale="ok", acting_user=cast.rita
    )


def scheduled_to_partners(cast: Cast, *, approvals: int = 1) -> tuple[Finding, ReleaseRequest]:
    f = at_review(cast)
    assess(cast, f)
    req = do_request_release(f, acting_user=cast.lab.alice)
    board = [cast.rita, factories.make_reviewer("ravi")]
    for reviewer in board[:approvals]:
        do_vote(req, kind="approve", acting_user=reviewer)
    check_schedule_release(req, embargo_until=timezone.now(), acting_user=cast.mara)
    return f, req


def test_requesting_review_moves_a_finding_to_the_review_tier_with_a_decision(cast: Cast) -> None:
    f = at_review(cast)
    assert (f.tier, f.status) == (Tier.REVIEW, FindingStatus.IN_REVIEW)
    decision = ReleaseDecision.objects.get(finding=f)
    assert (decision.to_tier, decision.decided_by, decision.policy.version) == (
        1,
        cast.lab.alice,
        1,
    )


def test_the_scheduler_promotes_a_due_release_that_passes_every_gate(cast: Cast) -> None:
    f, req = scheduled_to_partners(cast)
    results = jobs.release_due_findings()
    f.refresh_from_db()
    assert f.tier == Tier.PARTNERS
    assert results == [(req.pk, "released")]
    decision = ReleaseDecision.objects.get(finding=f, to_tier=Tier.PARTNERS)
    assert decision.decided_by is None and decision.approvals == ["rita"]
    assert "scheduler" in decision.rationale


def test_the_scheduler_holds_back_on_a_missing_approval(cast: Cast) -> None:
    f, _req = scheduled_to_partners(cast, approvals=0)
    [(_, outcome)] = jobs.release_due_findings()
    f.refresh_from_db()
    assert f.tier == Tier.REVIEW
    assert "0 of 1 required approvals" in outcome
    assert AuditEntry.objects.filter(action="release.hold").count() == 1
    assert Notification.objects.filter(user=cast.mara, kind="release_held").exists()


def test_the_scheduler_holds_back_on_an_open_objection_until_it_is_resolved(cast: Cast) -> None:
    f, req = scheduled_to_partners(cast)
    ola = factories.make_reviewer("ola")
    objection = do_vote(req, kind="object", rationale="leaks a capability trick", acting_user=ola)
    jobs.release_due_findings()
    jobs.release_due_findings()  # a second tick with the same reason adds no entry
    f.refresh_from_db()
    assert f.tier == Tier.REVIEW
    assert AuditEntry.objects.filter(action="release.hold").count() == 1
    do_withdraw_objection(objection, reason="trick removed", acting_user=ola)
    jobs.release_due_findings()
    f.refresh_from_db()
    assert f.tier == Tier.PARTNERS


def test_the_scheduler_holds_back_on_a_retracted_dependency(cast: Cast) -> None:
    f, _req = scheduled_to_partners(cast)
    base = factories.make_finding(cast.lab.project, tier=Tier.PUBLIC)
    f.depends_on.add(base)
    do_retract_finding(base, reason="flawed eval", acting_user=cast.lab.alice)
    [(_, outcome)] = jobs.release_due_findings()
    assert f"depends on retracted finding #{base.pk}" in outcome
    f.refresh_from_db()
    assert f.tier == Tier.REVIEW


def test_an_approval_from_someone_who_left_the_board_no_longer_counts(cast: Cast) -> None:
    _f, _ = scheduled_to_partners(cast)
    cast.rita.groups.clear()
    [(_, outcome)] = jobs.release_due_findings()
    assert "0 of 1" in outcome


def test_public_release_waits_for_the_embargo_instant(cast: Cast) -> None:
    f, _ = scheduled_to_partners(cast)
    jobs.release_due_findings()
    req = do_request_release(f, acting_user=cast.mara)
    for r in (cast.rita, factories.make_reviewer("ravi2")):
        do_vote(req, kind="approve", acting_user=r)
    with pytest.raises(ValidationError):  # policy v1: at least 24 h
        check_schedule_release(req, embargo_until=timezone.now(), acting_user=cast.mara)
    embargo = timezone.now() + timedelta(hours=25)
    check_schedule_release(req, embargo_until=embargo, acting_user=cast.mara)
    assert do_release_due() == []
    assert do_release_due(now=embargo + timedelta(seconds=1)) == [(req.pk, "released")]
    f.refresh_from_db()
    assert (f.tier, f.status) == (Tier.PUBLIC, FindingStatus.RELEASED)


def test_high_capability_uplift_raises_the_bar(cast: Cast) -> None:
    f = at_review(cast)
    assess(cast, f, uplift=3)
    req = do_request_release(f, acting_user=cast.lab.alice)
    do_vote(req, kind="approve", acting_user=cast.rita)
    reasons = gate_reasons(req, now=timezone.now() + timedelta(days=10))
    assert reasons == ["awaiting 2 more approvals (1 of 3 required approvals, policy v1)"]


def test_release_decisions_are_immutable(cast: Cast) -> None:
    decision = ReleaseDecision.objects.get(finding=at_review(cast))
    with pytest.raises(ImmutableError):
        decision.save()
    with pytest.raises(ImmutableError):
        decision.delete()


def test_retraction_notifies_everyone_who_accessed_it_and_leaves_a_tombstone(cast: Cast) -> None:
    f = factories.make_finding(cast.lab.project, tier=Tier.PARTNERS)
    audit.record(cast.carol, "finding.view", f)
    audit.record(cast.rita, "finding.view", f)
    mail.outbox.clear()
    with pytest.raises(ValidationError):
        do_retract_finding(f, reason=" ", acting_user=cast.mara)
    with django_capture_on_commit():
        do_retract_finding(f, reason="flawed evaluation", acting_user=cast.mara)
    told = set(
        Notification.objects.filter(kind="retraction").values_list("user__username", flat=True)
    )
    assert told == {"carol", "rita", "alice"}
    assert {m.to[0] for m in mail.outbox} == {"carol@lab.test", "rita@lab.test", "alice@lab.test"}
    response = factories_client(cast.carol).get(f.get_absolute_url())
    assert response.status_code == 410 and b"retracted" in response.content
    assert f.title.encode() not in response.content


def test_expiry_warnings_are_sent_once_and_lapsed_grants_are_announced(cast: Cast) -> None:
    factories.make_grant(cast.carol, project=cast.lab.other_project, days=3)
    assert do_warn_expiring_grants() == 2  # carol's 3-day grant warned, erin's lapsed
    assert jobs.warn_expiring_grants() == 0
    kinds = set(Notification.objects.values_list("user__username", "kind"))
    assert {("carol", "grant_expiring"), ("erin", "grant_expired")} <= kinds
    later = timezone.now() + timedelta(days=4)
    assert do_warn_expiring_grants(now=later) == 1  # carol's grant has now lapsed


def test_the_beat_schedule_runs_the_release_scheduler() -> None:
    from h3lab.celery import _beat_schedule

    tasks_scheduled = {e["task"] for e in _beat_schedule().values()}
    assert {
        "disclosure.tasks.release_due_findings",
        "disclosure.tasks.warn_expiring_grants",
    } <= tasks_scheduled


def test_the_disclosure_jobs_keep_the_names_queued_messages_and_the_schedule_use() -> None:
    from h3lab.celery import _beat_schedule, app

    registered = {
        "disclosure.tasks.release_due_findings": jobs.release_due_findings,
        "disclosure.tasks.warn_expiring_grants": jobs.warn_expiring_grants,
        "disclosure.tasks.build_export": jobs.build_export,
    }
    for name, task in registered.items():
        assert task.name == name
        assert app.tasks[name] == task and app.tasks[name].__module__ == "h3lab.jobs"
    scheduled = {e["task"] for e in _beat_schedule().values()}
    assert scheduled <= set(app.tasks), "every scheduled task is registered"


# helpers


def django_capture_on_commit() -> AbstractContextManager[list[Callable[[], Any]]]:
    from django.test import TestCase

    return TestCase.captureOnCommitCallbacks(execute=True)


def factories_client(user: User) -> Client:
    from tests.conftest import login

    return login(user)


def test_the_finding_page_gate_reaches_the_same_answer_as_a_fresh_read(cast: Cast) -> None:
    """The finding page decides the gate from rows it has already read (gate_inputs_from);
    decisions read them fresh (read_gate_inputs). Both see the same approvals (current board
    members only, recused ones left out), objections, rule and dependencies."""
    from django.conf import settings
    from django.db.models import Prefetch

    from disclosure.gates import current_rules, gate_inputs_from, on_board, read_gate_inputs
    from disclosure.models import ObjectionClearance, Recusal

    f = at_review(cast)
    assess(cast, f, uplift=2)
    dep = factories.make_finding(cast.lab.project, title="Earlier result")
    f.depends_on.add(dep)
    req = do_request_release(f, acting_user=cast.lab.alice)
    left, recused, objector = (factories.make_reviewer(n) for n in ("lena", "remo", "otto"))
    for r in (cast.rita, left, recused):
        do_vote(req, kind="approve", acting_user=r)
    do_vote(req, kind="object", rationale="too early", acting_user=objector)
    left.groups.remove(*left.groups.filter(name=settings.H3LAB_REVIEW_BOARD_GROUP))
    Recusal.objects.create(finding=f, reviewer=recused, reason="co-author")

    def page_inputs() -> Any:
        votes = req.votes.select_related("reviewer").annotate(on_board=on_board())
        clearances = Prefetch("clearances", ObjectionClearance.objects.all())
        return gate_inputs_from(
            req,
            rules=current_rules(),
            assessments=list(f.assessments.all()),
            recusals=list(f.recusals.all()),
            votes=list(votes.prefetch_related(clearances)),
            dependencies=list(f.depends_on.all()),
        )

    later = timezone.now() + timedelta(days=10)

    def same_gate() -> Any:
        fresh, page = read_gate_inputs(req, f), page_inputs()
        assert page.gate == fresh.gate
        assert page.gate.approvals == ["rita"]
        assert page.open_objections == fresh.open_objections
        assert [d.pk for d in page.dependencies] == [d.pk for d in fresh.dependencies]
        reasons = gate_reasons(req, now=later, finding=f, inputs=page)
        assert reasons == gate_reasons(req, now=later, finding=f)
        return reasons

    assert "1 unresolved objection" in same_gate()
    do_withdraw_objection(req.votes.get(reviewer=objector), acting_user=objector)
    assert not any("objection" in r for r in same_gate())

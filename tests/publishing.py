"""Helpers for the publication tests: take findings through the real release gates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from disclosure.actions.release import (
    check_schedule_release,
    do_release_due,
    do_request_release,
    do_request_review,
)
from disclosure.actions.review import do_assess_finding, do_vote
from experiments.models import Finding, Tier
from tests import factories
from tests.conftest import Cast


def promote(cast: Cast, finding: Finding, to: int = Tier.PUBLIC) -> Finding:
    """Move ``finding`` up through review, partners and public (up to ``to``) with an
    assessment, the approvals policy v1 needs and an embargo that has passed: each step
    leaves its recorded release decision."""
    if finding.tier == Tier.TEAM:
        do_request_review(finding, acting_user=cast.lab.alice)
        finding.refresh_from_db()
    if not finding.assessments.exists():
        do_assess_finding(
            finding, capability_uplift=0, alignment_value=2, rationale="ok", acting_user=cast.rita
        )
    board = [cast.rita, _reviewer("ravi"), _reviewer("rosa")]
    while finding.tier < to:
        req = do_request_release(finding, acting_user=cast.lab.alice)
        for reviewer in board:
            do_vote(req, kind="approve", acting_user=reviewer)
        embargo = timezone.now() + timedelta(hours=25 if req.target_tier == Tier.PUBLIC else 0)
        check_schedule_release(req, embargo_until=embargo, acting_user=cast.mara)
        do_release_due(now=embargo + timedelta(seconds=1))
        finding.refresh_from_db()
        assert finding.tier == req.target_tier, req.hold_reason
    return finding


def _reviewer(name: str) -> Any:
    from django.contrib.auth.models import User

    user = User.objects.filter(username=name).first()
    return user or factories.make_reviewer(name)

"""Helpers for the publication tests: take findings through the real release gates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from disclosure import actions
from experiments.models import Finding, Tier
from tests import factories
from tests.conftest import Cast


def promote(cast: Cast, finding: Finding, to: int = Tier.PUBLIC) -> Finding:
    """Move ``finding`` up through review, partners and public (up to ``to``) with an
    assessment, the approvals policy v1 needs and an embargo that has passed: each step
    leaves its recorded release decision."""
    if finding.tier == Tier.TEAM:
        actions.do_request_review(finding, acting_user=cast.lab.alice)
        finding.refresh_from_db()
    if not finding.assessments.exists():
        actions.do_assess_finding(
            finding, capability_uplift=0, alignment_value=2, rationale="ok", acting_user=cast.rita
        )
    board = [cast.rita, _reviewer("ravi"), _reviewer("rosa")]
    while finding.tier < to:
        req = actions.do_request_release(finding, acting_user=cast.lab.alice)
        for reviewer in board:
            actions.do_vote(req, kind="approve", acting_user=reviewer)
        embargo = timezone.now() + timedelta(hours=25 if req.target_tier == Tier.PUBLIC else 0)
        actions.check_schedule_release(req, embargo_until=embargo, acting_user=cast.mara)
        actions.do_release_due(now=embargo + timedelta(seconds=1))
        finding.refresh_from_db()
        assert finding.tier == req.target_tier, req.hold_reason
    return finding


def _reviewer(name: str) -> Any:
    from django.contrib.auth.models import User

    user = User.objects.filter(username=name).first()
    return user or factories.make_reviewer(name)

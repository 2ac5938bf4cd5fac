"""Periodic disclosure jobs (Celery beat; schedule in :func:`h3lab.celery._beat_schedule`).

Thin: each task calls one action, which re-checks every gate itself and is idempotent, so a
duplicate delivery or an overlapping beat tick changes nothing twice.
"""

from __future__ import annotations

from celery import shared_task

from disclosure.actions.grants import do_warn_expiring_grants
from disclosure.actions.release import do_release_due


@shared_task(acks_late=True, soft_time_limit=120, time_limit=180, ignore_result=True)
def release_due_findings() -> list[tuple[int, str]]:
    """At each embargo instant: re-check quorum, objections, retractions and dependencies,
    then promote, or record why the release was held back."""
    return do_release_due()


@shared_task(acks_late=True, soft_time_limit=120, time_limit=180, ignore_result=True)
def warn_expiring_grants() -> int:
    return do_warn_expiring_grants()


@shared_task(
    name="disclosure.tasks.build_export",
    acks_late=True,
    soft_time_limit=3600,
    time_limit=3900,
    max_retries=0,
)
def build_export(export_id: int) -> str:
    """Build one requested bundle; the Export row records progress and the outcome."""
    from disclosure.exports.build import build_export as build

    return build(export_id)

"""The review flow's missing links: reviewers hear of findings that need an assessment and find
them in the queue; every reader of a finding sees its evidence, and nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from disclosure.actions.release import do_request_review
from disclosure.models import Notification
from experiments.models import MetricSnapshot, Tier
from experiments.storage import store_file
from tests import factories
from tests.conftest import Cast, login
from tests.publishing import promote

pytestmark = pytest.mark.django_db


def test_a_review_request_tells_the_board_and_lands_in_its_queue(cast: Cast) -> None:
    finding = factories.make_finding(cast.lab.project, title="Needs eyes")
    do_request_review(finding, acting_user=cast.lab.alice)
    note = Notification.objects.get(user=cast.rita)
    assert note.subject_for(readable=True) == "Needs eyes needs a dual-use assessment"
    queue = login(cast.rita).get(reverse("review-queue")).content.decode()
    assert "Needs eyes" in queue and reverse("finding-assess", args=[finding.pk]) in queue
    mara_queue = login(cast.mara).get(reverse("review-queue")).content.decode()
    assert "Needs eyes" in mara_queue
    assert reverse("finding-assess", args=[finding.pk]) not in mara_queue


def test_readers_see_the_cited_evidence_with_frozen_metrics_and_plots(
    cast: Cast, tmp_path: Path
) -> None:
    run = factories.make_run(cast.lab.project, user=cast.lab.alice)
    png = tmp_path / "attention.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 16)
    plot = store_file(run, png, "attention.png", kind="plot")
    plot.save()
    other = tmp_path / "scratch.json"
    other.write_text("{}")
    uncited = store_file(run, other, "scratch.json")
    uncited.save()
    finding = factories.make_finding(cast.lab.project, title="Cited")
    finding.runs.add(run)
    finding.artifacts.add(plot)
    MetricSnapshot.objects.create(
        finding=finding, run=run, name="test_accuracy", step=40, value=0.97
    )
    finding = promote(cast, finding, to=Tier.PARTNERS)
    page = login(cast.carol).get(finding.get_absolute_url()).content.decode()
    assert "test_accuracy = 0.9700 @ step 40" in page
    assert f'<img src="{reverse("artifact-download", args=[plot.pk])}"' in page
    assert "scratch.json" not in page
    # the partner may not open the run page: the run is named, not linked
    assert reverse("run", args=[run.pk]) not in page
    team_page = login(cast.lab.alice).get(finding.get_absolute_url()).content.decode()
    assert reverse("run", args=[run.pk]) in team_page


def test_a_recused_reviewer_gets_no_notice_about_that_finding(cast: Cast) -> None:
    from disclosure.actions.release import do_request_release
    from disclosure.models import Recusal

    finding = promote(cast, factories.make_finding(cast.lab.project), to=Tier.REVIEW)
    Recusal.objects.create(finding=finding, reviewer=cast.rex, reason="co-author")
    Notification.objects.all().delete()
    do_request_release(finding, acting_user=cast.lab.alice)
    told = set(Notification.objects.values_list("user__username", flat=True))
    assert "rita" in told and "rex" not in told


def test_email_names_no_finding_and_carries_only_a_link(
    cast: Cast, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    from disclosure.actions.release import do_request_release

    finding = promote(
        cast, factories.make_finding(cast.lab.project, title="SECRET-TITLE"), to=Tier.REVIEW
    )
    with django_capture_on_commit_callbacks(execute=True):
        do_request_release(finding, rationale="SECRET-RATIONALE", acting_user=cast.lab.alice)
    assert mailoutbox
    for message in mailoutbox:
        assert "SECRET" not in message.subject + message.body
        assert finding.get_absolute_url() in message.body

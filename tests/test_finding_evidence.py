"""One rule for a finding's evidence (experiments.actions.check_record_finding), whether it is
recorded on the page or through the API: the same input records the same evidence, and the
same bad evidence is refused on the same field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments.models import Finding, Run
from tests import factories
from tests.conftest import Lab
from tests.test_api import api, error, post
from tests.test_views_experiments import make_artifact

pytestmark = pytest.mark.django_db


def record_on_the_page(client: Client, source: Run, body: dict[str, Any]) -> Any:
    return client.post(reverse("finding-new", args=[source.pk]), body)


def record_through_the_api(lab: Lab, body: dict[str, Any]) -> Any:
    return post(api(lab.alice, "submit"), reverse("api-finding-list"), body)


def evidence(finding: Finding) -> tuple[set[int], set[int], set[tuple[int, str, int, float]]]:
    snapshots = {(s.run_id, s.name, s.step, s.value) for s in finding.snapshots.all()}
    runs = {r.pk for r in finding.runs.all()}
    return runs, {a.pk for a in finding.artifacts.all()}, snapshots


def test_the_page_and_the_api_record_the_same_evidence_for_the_same_input(
    as_alice: Client, lab: Lab, tmp_path: Path
) -> None:
    done = factories.make_run(lab.project)
    sibling = factories.make_run(lab.project, experiment="ablation")
    factories.add_metrics(done, "test_accuracy", [0.3, 0.99])
    factories.add_metrics(sibling, "test_accuracy", [0.2, 0.5, 0.6])
    plot = make_artifact(done, tmp_path, "loss.png", b"\x89PNG")
    body = {
        "title": "H3 solves induction heads",
        "body": "Both runs.",
        "runs": [done.pk, sibling.pk],
        "artifacts": [plot.pk],
        "metrics": ["test_accuracy"],
    }
    assert record_on_the_page(as_alice, done, body).status_code == 302
    assert record_through_the_api(lab, body).status_code == 201
    on_the_page, through_the_api = Finding.objects.order_by("pk")
    assert evidence(on_the_page) == evidence(through_the_api)
    runs, artifacts, snapshots = evidence(on_the_page)
    assert (runs, artifacts) == ({done.pk, sibling.pk}, {plot.pk})
    assert snapshots == {
        (done.pk, "test_accuracy", 10, 0.99),
        (sibling.pk, "test_accuracy", 20, 0.6),
    }


def test_an_artifact_of_a_run_not_cited_is_refused_on_both_paths_with_one_message(
    as_alice: Client, lab: Lab, tmp_path: Path
) -> None:
    done = factories.make_run(lab.project)
    sibling = factories.make_run(lab.project, experiment="ablation")
    plot = make_artifact(done, tmp_path, "loss.png", b"\x89PNG")
    body = {"title": "t", "body": "b", "runs": [sibling.pk], "artifacts": [plot.pk]}
    page = record_on_the_page(as_alice, done, body)
    response = record_through_the_api(lab, body)
    assert page.status_code == 200 and response.status_code == 400
    assert list(page.context["form"].errors["artifacts"]) == error(response)["fields"]["artifacts"]
    assert Finding.objects.exists() is False


def test_a_finding_on_the_page_must_cite_a_run_as_through_the_api(
    as_alice: Client, lab: Lab
) -> None:
    done = factories.make_run(lab.project)
    page = record_on_the_page(as_alice, done, {"title": "t", "body": "b"})
    assert page.status_code == 200
    assert page.context["form"].errors["runs"] == ["Cite at least one run."]
    assert Finding.objects.exists() is False

"""Analyses from the web page, the API and the terminal client, and findings recorded from
them. Submission only checks that the source's checkpoint is stored, so these tests store
stand-in bytes; tests/test_analysis_jobs.py and tests/e2e/test_analysis_worker.py run them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from experiments.models import Artifact, Finding, Reveals, Run, RunKind, RunStatus
from experiments.storage import store_file
from tests import factories
from tests.conftest import Lab, login
from tests.test_api_client import client_env, make_token
from tests.test_api_client_flow import run_client


def with_checkpoint(run: Run, tmp_path: Path) -> Run:
    src = tmp_path / "stand-in"
    src.write_bytes(b"weights")
    for name in ("model.safetensors", "config.json"):
        store_file(run, src, name).save()
    return run


@pytest.fixture
def source(lab: Lab, tmp_path: Path) -> Run:
    return with_checkpoint(factories.make_run(lab.project, status=RunStatus.SUCCEEDED), tmp_path)


def api(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token(user)}")
    return client


@pytest.mark.django_db
def test_a_succeeded_training_run_offers_the_analysis_card_to_its_members(
    lab: Lab, source: Run
) -> None:
    page = login(lab.alice).get(reverse("run", args=[source.pk]))
    assert page.status_code == 200
    assert b"data-analysis-card" in page.content
    assert reverse("run-analyse", args=[source.pk]).encode() in page.content

    running = factories.make_run(lab.project, status=RunStatus.RUNNING)
    page = login(lab.alice).get(reverse("run", args=[running.pk]))
    assert b"data-analysis-card" not in page.content


@pytest.mark.django_db
def test_submitting_the_card_queues_an_analysis_shown_with_its_source(
    lab: Lab, source: Run
) -> None:
    client = login(lab.alice)
    response = client.post(
        reverse("run-analyse", args=[source.pk]),
        {"kind": "ablation", "probe": "kernels", "examples": 32, "seed": 3, "modes": ["zero"]},
    )
    run = Run.objects.get(source=source)
    assert response.status_code == 302 and response["Location"] == run.get_absolute_url()
    assert (run.kind, run.status, run.project_id) == (
        RunKind.ABLATION,
        RunStatus.QUEUED,
        source.project_id,
    )
    assert run.config["analysis"] == {
        "kind": "ablation",
        "seed": 3,
        "examples": 32,
        "modes": ["zero"],
    }
    assert run.config["task"] == source.config["task"]
    page = client.get(run.get_absolute_url())
    assert b"data-analysis-source" in page.content
    assert f'href="{source.get_absolute_url()}"'.encode() in page.content
    assert b"data-analysis-card" not in page.content, "an analysis is not analysed again"
    rerun = reverse("run-rerun", args=[run.pk]).encode()
    assert rerun not in page.content, "an analysis is not a training config to run again"
    listing = client.get(reverse("runs"))
    assert b"data-run-kind" in listing.content and b"ablation" in listing.content


@pytest.mark.django_db
def test_a_refused_analysis_says_why_and_queues_nothing(lab: Lab, tmp_path: Path) -> None:
    bare = factories.make_run(lab.project, status=RunStatus.SUCCEEDED)  # no checkpoint stored
    response = login(lab.alice).post(
        reverse("run-analyse", args=[bare.pk]),
        {"kind": "evaluate", "examples": 64, "seed": 0},
        follow=True,
    )
    assert b"checkpoint is not stored" in response.content
    assert not Run.objects.filter(source=bare).exists()


@pytest.mark.django_db
def test_other_projects_members_get_404_on_submit(lab: Lab, source: Run) -> None:
    web = login(lab.bob).post(reverse("run-analyse", args=[source.pk]), {"kind": "evaluate"})
    assert web.status_code == 404
    rest = api(lab.bob).post(
        f"/api/v1/runs/{source.pk}/analyses/", {"kind": "evaluate"}, format="json"
    )
    assert rest.status_code == 404
    assert not Run.objects.filter(source=source).exists()


@pytest.mark.django_db
def test_the_api_queues_an_analysis_and_names_bad_fields(
    lab: Lab, source: Run, settings: Any
) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": None}
    client = api(lab.alice)
    response = client.post(
        f"/api/v1/runs/{source.pk}/analyses/",
        {"kind": "steering", "examples": 16, "coefficients": [0, 2.5]},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["kind"], body["source"]) == ("steering", source.pk)
    assert response["Location"] == f"/api/v1/runs/{body['id']}/"
    assert Run.objects.get(pk=body["id"]).config["analysis"]["coefficients"] == [0.0, 2.5]

    bad = client.post(
        f"/api/v1/runs/{source.pk}/analyses/",
        {"kind": "ablation", "examples": 1, "modes": ["shred"]},
        format="json",
    )
    assert bad.status_code == 400
    assert {"examples", "modes"} <= set(json.dumps(bad.json()).replace('"', " ").split())
    assert Run.objects.filter(source=source).count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
def test_the_client_analyse_command_queues_an_analysis(
    lab: Lab, live_server: Any, tmp_path: Path, settings: Any
) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": None}
    source = with_checkpoint(factories.make_run(lab.project, status=RunStatus.SUCCEEDED), tmp_path)
    env = client_env(live_server.url, make_token(lab.alice), tmp_path)
    done = run_client(
        env,
        "analyse",
        str(source.pk),
        "--kind",
        "ablation",
        "--examples",
        "16",
        "--modes",
        "zero",
        "mean",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    run = Run.objects.get(pk=json.loads(done.stdout)["id"])
    assert (run.kind, run.source_id) == (RunKind.ABLATION, source.pk)
    assert run.config["analysis"]["modes"] == ["zero", "mean"]
    assert f"ablation of #{source.pk}" in done.stderr

    refused = run_client(env, "analyse", str(source.pk), "--kind", "probe", "--probe", "nope")
    assert refused.returncode != 0


@pytest.mark.django_db
def test_recording_a_finding_from_an_analysis_prefills_its_evidence_and_reveals(
    lab: Lab, source: Run, tmp_path: Path
) -> None:
    analysis = factories.make_run(
        lab.project, status=RunStatus.SUCCEEDED, kind=RunKind.PATCHING, source=source
    )
    src = tmp_path / "patching.png"
    src.write_bytes(b"\x89PNG stand-in")
    store_file(analysis, src, "patching.png").save()
    store_file(analysis, src, "patching.json").save()
    outputs = set(Artifact.objects.filter(run=analysis).values_list("pk", flat=True))

    client = login(lab.alice)
    form = client.get(reverse("finding-new", args=[analysis.pk])).context["form"]
    assert set(form.initial["runs"]) == {analysis.pk, source.pk}
    assert set(form.initial["artifacts"]) == outputs
    assert form.initial["reveals"] == Reveals.MECHANISM

    response = client.post(
        reverse("finding-new", args=[analysis.pk]),
        {
            "title": "Patching locates recall",
            "body": "Layer 0 restores it.",
            "runs": [analysis.pk, source.pk],
            "artifacts": sorted(outputs),
            "reveals": Reveals.MECHANISM,
        },
    )
    assert response.status_code == 302, response.context["form"].errors
    finding = Finding.objects.get(title="Patching locates recall")
    assert finding.reveals == Reveals.MECHANISM
    assert set(finding.artifacts.values_list("pk", flat=True)) == outputs
    page = client.get(finding.get_absolute_url())
    assert b"data-reveals" in page.content

    training_form = client.get(reverse("finding-new", args=[source.pk])).context["form"]
    assert training_form.initial == {"runs": [source.pk]}


@pytest.mark.django_db
def test_the_api_records_what_a_finding_reveals(lab: Lab, source: Run, settings: Any) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": None}
    body = {"title": "Steering works", "body": "It does.", "runs": [source.pk]}
    response = api(lab.alice).post(
        "/api/v1/findings/", {**body, "reveals": "intervention"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["reveals"] == "intervention"
    assert Finding.objects.get(pk=response.json()["id"]).reveals == Reveals.INTERVENTION
    bad = api(lab.alice).post("/api/v1/findings/", {**body, "reveals": "magic"}, format="json")
    assert bad.status_code == 400

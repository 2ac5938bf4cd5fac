"""Experiments web UI: every page as anonymous, as someone who must not see it (bob, charlie)
and as someone who may (alice); plus the behaviour each page promises."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.http import HttpResponseBase
from django.test import Client
from django.urls import reverse

from experiments.models import Artifact, Finding, MetricSnapshot, Run, RunStatus, Tier
from experiments.signals import governed_change
from experiments.storage import store_file
from h3lab.config import RunConfig
from tests import factories
from tests.conftest import Lab

FORM = {
    "experiment": "induction",
    "name": "baseline",
    "preset": "h3",
    "task": "induction_head",
    "vocab_size": "20",
    "seq_len": "30",
    "d_model": "64",
    "n_layer": "2",
    "steps": "300",
    "lr": "0.0005",
    "batch_size": "32",
    "seed": "0",
    "queue": "cpu",
}


@pytest.fixture
def run(lab: Lab) -> Run:
    return factories.make_run(lab.project, name="tiny", status=RunStatus.RUNNING, step=5)


def make_artifact(run: Run, tmp_path: Path, name: str, data: bytes) -> Artifact:
    src = tmp_path / name
    src.write_bytes(data)
    artifact = store_file(run, src, name)
    artifact.save()
    return artifact


# Every signed-in page renders the disclosure app's nav (templates/disclosure/_nav.html): how
# many unread notifications, whether the user is on the review board or a release manager.
# All of it comes from the roles below: no query of its own.
NAV_QUERIES = 0
# Every signed-in request passes the second-factor gate (web/accounts.py), which reads the
# user's roles (disclosure.policy.roles: groups, team projects, delegations, recusals and the
# unread-notification count in one query); the nav and the policy reuse them for the rest of
# the request.
SECOND_FACTOR_QUERIES = 1


def login_redirect(response: HttpResponseBase) -> bool:
    return response.status_code == 302 and response["Location"].startswith(reverse("login"))


# --- the access matrix: every page × every persona ---------------------------------------------


def run_pages(run: Run) -> list[str]:
    return [
        reverse("project", args=[run.project.slug]),
        reverse("run-new", args=[run.project.slug]),
        reverse("run", args=[run.pk]),
        reverse("run-progress", args=[run.pk]),
        reverse("run-rerun", args=[run.pk]),
        reverse("finding-new", args=[run.pk]),
        reverse("runs-compare") + f"?ids={run.pk}",
    ]


def test_anonymous_visitors_are_sent_to_log_in_for_every_lab_page(client: Client, run: Run) -> None:
    for url in [*run_pages(run), reverse("runs")]:
        assert login_redirect(client.get(url)), url


@pytest.mark.parametrize("persona", ["as_bob", "as_charlie"])
def test_outsiders_get_404_for_every_page_of_another_projects_run(
    persona: str, run: Run, request: pytest.FixtureRequest
) -> None:
    client: Client = request.getfixturevalue(persona)
    for url in run_pages(run):
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("run-cancel", args=[run.pk])).status_code == 404


def test_members_can_open_every_page_of_their_run(as_alice: Client, run: Run) -> None:
    for url in run_pages(run):
        assert as_alice.get(url).status_code == 200, url


def test_a_missing_run_looks_exactly_like_a_forbidden_one(as_bob: Client, run: Run) -> None:
    forbidden = as_bob.get(reverse("run", args=[run.pk]))
    missing = as_bob.get(reverse("run", args=[run.pk + 1000]))
    assert forbidden.status_code == missing.status_code == 404
    assert forbidden.content == missing.content


# --- home and project ---------------------------------------------------------------------------


def test_anonymous_home_is_a_landing_page_with_public_findings(client: Client, lab: Lab) -> None:
    factories.make_finding(lab.project, tier=Tier.PUBLIC, title="Induction heads in H3")
    factories.make_finding(lab.project, tier=Tier.TEAM, title="Private draft")
    page = client.get(reverse("home")).content.decode()
    assert "Induction heads in H3" in page
    assert "Private draft" not in page
    assert reverse("login") in page


def test_dashboard_lists_only_the_users_projects_with_run_counts(
    as_alice: Client, lab: Lab, run: Run
) -> None:
    factories.make_run(lab.project)
    factories.make_run(lab.other_project, name="bobs-secret-run")
    response = as_alice.get(reverse("home"))
    assert [p.slug for p in response.context["projects"]] == ["induction"]
    assert response.context["projects"][0].n_runs == 2
    assert response.context["projects"][0].n_active == 1
    assert "bobs-secret-run" not in response.content.decode()


def test_project_page_shows_runs_experiments_findings_and_a_new_run_button(
    as_alice: Client, lab: Lab, run: Run
) -> None:
    factories.make_finding(lab.project, title="Heads form at step 300")
    page = as_alice.get(reverse("project", args=["induction"])).content.decode()
    assert "tiny" in page
    assert "Heads form at step 300" in page
    assert reverse("run-new", args=["induction"]) in page


# --- submitting runs ----------------------------------------------------------------------------


def test_submitting_the_form_creates_a_queued_run_with_that_config(
    as_alice: Client, lab: Lab, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = as_alice.post(reverse("run-new", args=["induction"]), FORM)
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("run", args=[run.pk])
    assert run.status == RunStatus.QUEUED
    assert (run.project, run.experiment.name, run.name) == (lab.project, "induction", "baseline")
    assert (run.created_by, run.preset, run.task, run.total_steps) == (
        lab.alice,
        "h3",
        "induction_head",
        300,
    )
    cfg = RunConfig.from_dict(run.config)
    assert (cfg.model.d_model, cfg.model.n_layer, cfg.train.steps) == (64, 2, 300)
    assert len(callbacks) == 1  # the job is sent only after commit (not run here)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": "0"}, "steps"),
        ({"n_layer": "0"}, "n_layer"),
        ({"preset": "attention", "d_model": "30"}, "d_model"),
        ({"lr": "-1e-3"}, "lr"),
        ({"batch_size": "many"}, "batch_size"),
        ({"task": "text"}, "corpus_upload"),
    ],
)
def test_invalid_input_gives_field_errors_and_creates_no_run(
    as_alice: Client, lab: Lab, changes: dict[str, str], field: str
) -> None:
    response = as_alice.post(reverse("run-new", args=["induction"]), {**FORM, **changes})
    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert Run.objects.exists() is False


def test_a_non_utf8_upload_gives_a_field_error_and_creates_no_run(
    as_alice: Client, lab: Lab
) -> None:
    upload = SimpleUploadedFile("bad.txt", b"\xff\xfe\x00 binary")
    response = as_alice.post(
        reverse("run-new", args=["induction"]), {**FORM, "task": "text", "corpus_upload": upload}
    )
    assert response.status_code == 200
    assert "corpus_upload" in response.context["form"].errors
    assert Run.objects.exists() is False


def test_a_text_upload_submits_a_language_modeling_run(as_alice: Client, lab: Lab) -> None:
    upload = SimpleUploadedFile("tiny.txt", b"the quick brown fox jumps over the lazy dog\n" * 20)
    response = as_alice.post(
        reverse("run-new", args=["induction"]),
        {**FORM, "task": "text", "seq_len": "32", "corpus_upload": upload},
    )
    assert response.status_code == 302
    run = Run.objects.get()
    assert run.task == "text"
    assert Path(run.config["task"]["path"]).read_bytes().startswith(b"the quick brown fox")


def test_rerun_prefills_the_form_from_the_source_runs_config(as_alice: Client, run: Run) -> None:
    form = as_alice.get(reverse("run-rerun", args=[run.pk])).context["form"]
    assert form.initial["d_model"] == 16
    assert form.initial["n_layer"] == 1
    assert form.initial["steps"] == 20
    assert form.initial["experiment"] == run.experiment.name


def test_submitting_a_rerun_links_the_new_run_to_its_source(as_alice: Client, run: Run) -> None:
    form = as_alice.get(reverse("run-rerun", args=[run.pk])).context["form"]
    data = {k: "" if v is None else str(v) for k, v in form.initial.items()}
    response = as_alice.post(reverse("run-rerun", args=[run.pk]), data)
    rerun = Run.objects.exclude(pk=run.pk).get()
    assert response["Location"] == reverse("run", args=[rerun.pk])
    assert rerun.rerun_of == run
    assert RunConfig.from_dict(rerun.config) == RunConfig.from_dict(run.config)


# --- runs list ----------------------------------------------------------------------------------


def test_runs_list_shows_only_visible_runs(as_bob: Client, lab: Lab, run: Run) -> None:
    mine = factories.make_run(lab.other_project, name="bobs-run")
    runs = list(as_bob.get(reverse("runs")).context["page"].object_list)
    assert runs == [mine]


def test_runs_list_filters_by_project_status_preset_task_and_experiment(
    as_alice: Client, lab: Lab, run: Run
) -> None:
    done = factories.make_run(lab.project, experiment="sweep", status=RunStatus.SUCCEEDED)
    url = reverse("runs")
    assert list(as_alice.get(url, {"status": "succeeded"}).context["page"]) == [done]
    assert list(as_alice.get(url, {"experiment": "swe"}).context["page"]) == [done]
    assert len(as_alice.get(url, {"project": "induction", "preset": "h3"}).context["page"]) == 2
    assert len(as_alice.get(url, {"task": "associative_recall"}).context["page"]) == 0
    # Filtering by a project you cannot see shows nothing of it (the value is invalid).
    assert (
        factories.make_run(lab.other_project)
        not in as_alice.get(url, {"project": "recall"}).context["page"]
    )


def test_runs_list_paginates_by_fifty(as_alice: Client, lab: Lab) -> None:
    for _ in range(51):
        factories.make_run(lab.project)
    first = as_alice.get(reverse("runs"))
    assert len(first.context["page"]) == 50
    assert len(as_alice.get(reverse("runs"), {"page": 2}).context["page"]) == 1


@pytest.mark.parametrize("n_runs", [3, 30])
def test_runs_list_uses_a_constant_number_of_queries(
    as_alice: Client, lab: Lab, n_runs: int, django_assert_num_queries: Any
) -> None:
    for i in range(n_runs):
        factories.make_run(lab.project, experiment=f"exp-{i % 4}", user=lab.alice)
    # 1 session, 2 user, 3 the filter's project (validating ?project=), 4 paginator count,
    # 5 the project choices rendered in the filter form, 6 the page of runs joined to project,
    # experiment and creator; plus the nav's and the second-factor gate's. Nothing per row.
    with django_assert_num_queries(6 + NAV_QUERIES + SECOND_FACTOR_QUERIES):
        response = as_alice.get(reverse("runs"), {"project": "induction"})
    assert len(response.context["page"]) == n_runs


# --- run page and progress ----------------------------------------------------------------------


def test_run_page_shows_config_status_and_cancel_for_an_active_run(
    as_alice: Client, run: Run
) -> None:
    page = as_alice.get(reverse("run", args=[run.pk])).content.decode()
    assert reverse("run-cancel", args=[run.pk]) in page
    assert reverse("run-progress", args=[run.pk]) in page
    assert "d_state" in page and "badge-running" in page


def test_run_page_of_a_finished_run_shows_the_log_tail_and_artifacts(
    as_alice: Client, lab: Lab, tmp_path: Path
) -> None:
    done = factories.make_run(lab.project)
    log = "".join(f"step {i} loss {1 / (i + 1):.3f}\n" for i in range(80))
    make_artifact(done, tmp_path, "train.log", log.encode())
    ckpt = make_artifact(done, tmp_path, "model.safetensors", b"\x00" * 1000)
    response = as_alice.get(reverse("run", args=[done.pk]))
    page = response.content.decode()
    assert response.context["log_lines"][0] == "step 30 loss 0.032"
    assert len(response.context["log_lines"]) == 50
    assert "step 29 " not in page and "step 79 loss" in page
    assert reverse("artifact-download", args=[ckpt.pk]) in page
    assert ckpt.sha256[:12] in page
    assert reverse("run-cancel", args=[done.pk]) not in page


def test_run_page_of_a_failed_run_shows_error_and_traceback(as_alice: Client, lab: Lab) -> None:
    failed = factories.make_run(
        lab.project,
        status=RunStatus.FAILED,
        error="ValueError: boom",
        traceback="Traceback …\n  line 3",
    )
    page = as_alice.get(reverse("run", args=[failed.pk])).content.decode()
    assert "ValueError: boom" in page and "Traceback …" in page


@pytest.mark.parametrize("n_items", [3, 30])
def test_run_page_uses_a_constant_number_of_queries(
    as_alice: Client, lab: Lab, tmp_path: Path, n_items: int, django_assert_num_queries: Any
) -> None:
    done = factories.make_run(lab.project, user=lab.alice)
    for i in range(n_items):
        make_artifact(done, tmp_path, f"probe-{i}.json", b"{}")
    factories.add_metrics(done, "train_loss", [1.0 / (i + 1) for i in range(n_items)])
    # 1 session, 2 user, 3 the run joined to experiment and project, 4 its artifacts,
    # 5 the creator's name; plus the nav's queries and the second-factor gate's (the roles,
    # which also answer the membership check for the action buttons).
    # Metric points are not read here: the page's script fetches them from progress.json.
    with django_assert_num_queries(5 + NAV_QUERIES + SECOND_FACTOR_QUERIES):
        as_alice.get(reverse("run", args=[done.pk]))


def test_progress_json_reports_live_numbers_and_metric_series(as_alice: Client, run: Run) -> None:
    factories.add_metrics(run, "train_loss", [2.0, 1.5, 1.0])
    factories.add_metrics(run, "lr", [1e-4, 2e-4, 3e-4])  # not charted
    Run.objects.filter(pk=run.pk).update(loss=1.0, tokens_per_s=1234.5, eta_s=12.0, total_steps=20)
    data = as_alice.get(reverse("run-progress", args=[run.pk])).json()
    assert data["status"] == "running" and data["active"] is True
    assert (data["step"], data["total_steps"], data["fraction"]) == (5, 20, 0.25)
    assert (data["loss"], data["tokens_per_s"], data["eta_s"]) == (1.0, 1234.5, 12.0)
    assert data["series"] == {"train_loss": [[0, 2.0], [10, 1.5], [20, 1.0]]}
    assert set(data) >= {"accuracy", "test_accuracy", "error", "finished_at", "cursor"}


def test_progress_json_after_a_cursor_returns_only_new_points(as_alice: Client, run: Run) -> None:
    url = reverse("run-progress", args=[run.pk])
    factories.add_metrics(run, "train_loss", [2.0, 1.5])
    cursor = as_alice.get(url).json()["cursor"]
    factories.add_metrics(run, "test_accuracy", [0.5])
    data = as_alice.get(url, {"after": cursor}).json()
    assert data["series"] == {"test_accuracy": [[0, 0.5]]}
    assert as_alice.get(url, {"after": data["cursor"]}).json()["series"] == {}


def test_progress_json_is_never_cached(as_alice: Client, run: Run) -> None:
    response = as_alice.get(reverse("run-progress", args=[run.pk]))
    assert "no-cache" in response["Cache-Control"]


# --- cancel -------------------------------------------------------------------------------------


def test_cancelling_a_queued_run_marks_it_cancelled(as_alice: Client, lab: Lab) -> None:
    queued = factories.make_run(lab.project, status=RunStatus.QUEUED)
    response = as_alice.post(
        reverse("run-cancel", args=[queued.pk]), {"reason": "wrong lr", "confirm": "1"}
    )
    assert response.status_code == 302 and response["Location"] == reverse("run", args=[queued.pk])
    queued.refresh_from_db()
    assert queued.status == RunStatus.CANCELLED
    assert queued.finished_at is not None
    from disclosure.models import AuditEntry

    entry = AuditEntry.objects.get(action="run.cancel", object_id=str(queued.pk))
    assert entry.new is not None and entry.new["reason"] == "wrong lr"


def test_cancelling_needs_a_reason_and_a_confirmation(as_alice: Client, lab: Lab) -> None:
    queued = factories.make_run(lab.project, status=RunStatus.QUEUED)
    for data in ({}, {"reason": "x"}, {"confirm": "1"}):
        response = as_alice.post(reverse("run-cancel", args=[queued.pk]), data)
        assert response.status_code == 302
        queued.refresh_from_db()
        assert queued.status == RunStatus.QUEUED


def test_cancelling_a_finished_run_changes_nothing(as_alice: Client, lab: Lab) -> None:
    done = factories.make_run(lab.project, status=RunStatus.SUCCEEDED)
    as_alice.post(reverse("run-cancel", args=[done.pk]))
    done.refresh_from_db()
    assert done.status == RunStatus.SUCCEEDED


def test_cancel_by_a_non_member_is_404_and_leaves_the_run_running(as_bob: Client, run: Run) -> None:
    assert as_bob.post(reverse("run-cancel", args=[run.pk])).status_code == 404
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


def test_cancel_by_get_is_not_allowed(as_alice: Client, run: Run) -> None:
    assert as_alice.get(reverse("run-cancel", args=[run.pk])).status_code == 405
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING


# --- artifact download --------------------------------------------------------------------------


def test_download_streams_the_exact_bytes_as_an_attachment(
    as_alice: Client, run: Run, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 5000
    artifact = make_artifact(run, tmp_path, "model.safetensors", data)
    response = as_alice.get(reverse("artifact-download", args=[artifact.pk]))
    assert response.status_code == 200
    assert response.getvalue() == data
    assert response["Content-Length"] == str(len(data))
    assert response["Content-Disposition"] == 'attachment; filename="model.safetensors"'
    assert response["X-Content-Type-Options"] == "nosniff"


def test_download_is_announced_for_the_audit_log(
    as_alice: Client, lab: Lab, run: Run, tmp_path: Path
) -> None:
    artifact = make_artifact(run, tmp_path, "config.json", b"{}")
    seen: list[dict[str, Any]] = []

    def listener(**kwargs: Any) -> None:
        seen.append(kwargs)

    governed_change.connect(listener)
    try:
        as_alice.get(reverse("artifact-download", args=[artifact.pk]))
    finally:
        governed_change.disconnect(listener)
    downloads = [s for s in seen if s["action"] == "artifact.download"]
    assert len(downloads) == 1
    assert downloads[0]["actor"] == lab.alice and downloads[0]["obj"] == artifact


def test_download_is_404_for_outsiders_and_anonymous(
    client: Client, as_bob: Client, as_charlie: Client, run: Run, tmp_path: Path
) -> None:
    artifact = make_artifact(run, tmp_path, "model.safetensors", b"weights")
    url = reverse("artifact-download", args=[artifact.pk])
    for c in (client, as_bob, as_charlie):
        assert c.get(url).status_code == 404


def test_download_of_a_file_storage_lost_is_404_not_500(
    as_alice: Client, run: Run, tmp_path: Path
) -> None:
    artifact = make_artifact(run, tmp_path, "model.safetensors", b"weights")
    from experiments.storage import artifact_root

    (artifact_root() / artifact.path).unlink()
    assert as_alice.get(reverse("artifact-download", args=[artifact.pk])).status_code == 404


def test_svg_plots_shown_inline_are_sandboxed(as_alice: Client, run: Run, tmp_path: Path) -> None:
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    artifact = make_artifact(run, tmp_path, "loss.svg", svg)
    response = as_alice.get(reverse("artifact-download", args=[artifact.pk]), {"inline": "1"})
    assert response["Content-Disposition"].startswith("inline")
    assert "sandbox" in response["Content-Security-Policy"]


def test_inline_is_refused_for_non_image_artifacts(
    as_alice: Client, run: Run, tmp_path: Path
) -> None:
    artifact = make_artifact(run, tmp_path, "notes.html", b"<script>alert(1)</script>")
    response = as_alice.get(reverse("artifact-download", args=[artifact.pk]), {"inline": "1"})
    assert response["Content-Disposition"].startswith("attachment")


# --- compare ------------------------------------------------------------------------------------


def test_compare_shows_the_config_keys_that_differ(as_alice: Client, lab: Lab) -> None:
    a = factories.make_run(lab.project, config=factories.tiny_config(lr=1e-3))
    b = factories.make_run(lab.project, config=factories.tiny_config(lr=3e-3))
    factories.add_metrics(a, "test_accuracy", [0.2, 0.9])
    response = as_alice.get(reverse("runs-compare"), {"ids": [a.pk, b.pk]})
    differing = [row["key"] for row in response.context["rows"] if row["differs"]]
    assert differing == ["train.lr"]
    assert response.context["chart_data"]["series"] == {
        a.pk: {"test_accuracy": [[0, 0.2], [10, 0.9]]}
    }
    assert "train.lr" in response.content.decode()


def test_compare_is_404_if_any_run_is_not_visible(as_alice: Client, lab: Lab, run: Run) -> None:
    bobs = factories.make_run(lab.other_project)
    url = reverse("runs-compare")
    assert as_alice.get(url, {"ids": [run.pk, bobs.pk]}).status_code == 404
    assert as_alice.get(url, {"ids": [run.pk, 99999]}).status_code == 404
    assert as_alice.get(url, {"ids": ["x"]}).status_code == 302  # nothing usable selected


# --- record a finding ---------------------------------------------------------------------------


def test_recording_a_finding_attaches_runs_artifacts_and_metric_snapshots(
    as_alice: Client, lab: Lab, tmp_path: Path
) -> None:
    done = factories.make_run(lab.project)
    sibling = factories.make_run(lab.project, experiment="ablation")
    factories.add_metrics(done, "test_accuracy", [0.3, 0.7, 0.99])
    factories.add_metrics(done, "train_loss", [2.0, 0.1])
    plot = make_artifact(done, tmp_path, "loss.png", b"\x89PNG")
    response = as_alice.post(
        reverse("finding-new", args=[done.pk]),
        {
            "title": "H3 solves induction heads",
            "body": "Accuracy reaches **99%**.",
            "runs": [done.pk, sibling.pk],
            "artifacts": [plot.pk],
            "metrics": ["test_accuracy"],
        },
    )
    finding = Finding.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "finding", args=[finding.pk]
    )
    assert (finding.project, finding.tier, finding.created_by) == (
        lab.project,
        Tier.TEAM,
        lab.alice,
    )
    assert set(finding.runs.all()) == {done, sibling}
    assert list(finding.artifacts.all()) == [plot]
    snap = MetricSnapshot.objects.get(finding=finding)
    assert (snap.run, snap.name, snap.step, snap.value) == (done, "test_accuracy", 20, 0.99)


def test_finding_form_offers_this_projects_runs_and_this_runs_metrics(
    as_alice: Client, lab: Lab, run: Run
) -> None:
    factories.add_metrics(run, "test_accuracy", [0.5])
    factories.make_run(lab.other_project, name="bobs-run")
    form = as_alice.get(reverse("finding-new", args=[run.pk])).context["form"]
    assert list(form.fields["runs"].queryset) == [run]
    assert form.fields["metrics"].choices == [("test_accuracy", "test_accuracy")]
    assert form.initial["runs"] == [run.pk]


def test_evidence_from_another_project_is_rejected(as_alice: Client, lab: Lab, run: Run) -> None:
    bobs = factories.make_run(lab.other_project)
    response = as_alice.post(
        reverse("finding-new", args=[run.pk]), {"title": "t", "body": "b", "runs": [bobs.pk]}
    )
    assert response.status_code == 200
    assert "runs" in response.context["form"].errors
    assert Finding.objects.exists() is False


def test_artifacts_cited_by_a_public_finding_download_without_logging_in(
    client: Client, lab: Lab, tmp_path: Path
) -> None:
    done = factories.make_run(lab.project)
    plot = make_artifact(done, tmp_path, "loss.png", b"\x89PNG public evidence")
    finding = factories.make_finding(lab.project, tier=Tier.PUBLIC)
    finding.artifacts.add(plot)
    response = client.get(reverse("artifact-download", args=[plot.pk]))
    assert response.status_code == 200
    assert response.getvalue() == b"\x89PNG public evidence"


# --- layout -------------------------------------------------------------------------------------


def test_login_page_renders_and_signed_in_pages_log_out_by_post(
    client: Client, as_alice: Client
) -> None:
    assert 'name="password"' in client.get(reverse("login")).content.decode()
    page = as_alice.get(reverse("home")).content.decode()
    assert f'<form method="post" action="{reverse("logout")}"' in page
    assert reverse("findings") in page and reverse("runs") in page

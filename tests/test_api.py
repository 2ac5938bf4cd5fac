"""The REST API: tokens (hashing, expiry, revocation, scopes, rate limits), error bodies, and
each endpoint's behaviour. Who may call what is checked persona by persona in
test_api_permissions.py; the schema is fuzzed in test_api_schema.py."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from api import actions as api_actions
from api.models import ApiToken
from disclosure.models import AuditEntry, Grant, ReleaseRequest
from experiments.models import Artifact, Finding, Run, RunStatus, Tier
from experiments.runconfig import corpus_dir
from experiments.storage import store_file
from tests import factories
from tests.conftest import Cast, Lab, login

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_rate_counters() -> None:
    """Token ids repeat across tests (rolled back); their rate counters must not."""
    cache.clear()


def token(user: User, scope: str = "manage", days: int = 30) -> str:
    return api_actions.do_create_token(
        user=user, name="test", scope=scope, days=days, acting_user=user
    ).plaintext


def api(user: User | None = None, scope: str = "manage") -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token(user, scope)}")
    return client


def post(client: APIClient, url: str, body: Any = None) -> Any:
    return client.post(url, json.dumps(body or {}), content_type="application/json")


def tiny_config() -> dict[str, Any]:
    return factories.tiny_config().to_dict()


def error(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


# --- tokens ---------------------------------------------------------------------------------------


def test_a_token_is_stored_only_as_a_hash_of_its_secret(lab: Lab) -> None:
    made = api_actions.do_create_token(
        user=lab.alice, name="laptop", scope="read", days=30, acting_user=lab.alice
    )
    _, prefix, secret = made.plaintext.split("_", 2)
    row = ApiToken.objects.get(pk=made.token.pk)
    assert row.prefix == prefix
    assert row.digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in json.dumps(list(ApiToken.objects.values()), default=str)
    assert secret not in str(row)


def test_creating_and_revoking_a_token_is_audited_without_the_secret(lab: Lab) -> None:
    made = api_actions.do_create_token(
        user=lab.alice, name="laptop", scope="submit", days=7, acting_user=lab.alice
    )
    api_actions.do_revoke_token(made.token, acting_user=lab.alice)
    entries = AuditEntry.objects.filter(object_type="api.apitoken").order_by("id")
    assert [e.action for e in entries] == ["api_token.create", "api_token.revoke"]
    assert all(e.actor_id == lab.alice.pk for e in entries)
    secret = made.plaintext.split("_", 2)[2]
    assert not any(secret in json.dumps([e.old, e.new, e.object_repr]) for e in entries)


def test_a_valid_token_authenticates_and_says_its_scope(lab: Lab) -> None:
    response = api(lab.alice, "submit").get(reverse("api-me"))
    assert response.status_code == 200
    body = response.json()
    assert body["username"] == "alice"
    assert body["auth"] == "token"
    assert body["scope"] == "submit"
    assert body["projects"] == ["induction"]


@pytest.mark.parametrize(
    "header",
    ["Bearer h3l_nothere_secret", "Bearer not-a-token", "Bearer", "Token a b"],
    ids=["unknown", "malformed", "missing", "extra-parts"],
)
def test_bad_credentials_answer_401_with_the_error_body(lab: Lab, header: str) -> None:
    response = APIClient().get(reverse("api-run-list"), HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert error(response)["code"] == "authentication_failed"
    assert error(response)["fields"] == {}


def test_a_wrong_secret_for_a_real_prefix_is_refused(lab: Lab) -> None:
    plaintext = token(lab.alice)
    forged = plaintext[: plaintext.rindex("_") + 1] + "x" * 43
    response = APIClient().get(reverse("api-me"), HTTP_AUTHORIZATION=f"Bearer {forged}")
    assert response.status_code == 401
    assert error(response)["message"] == "Invalid API token."


def test_an_expired_token_stops_working(lab: Lab) -> None:
    plaintext = token(lab.alice)
    ApiToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = APIClient().get(reverse("api-me"), HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert response.status_code == 401
    assert "expired" in error(response)["message"]


def test_a_revoked_token_stops_working_on_the_next_request(lab: Lab) -> None:
    made = api_actions.do_create_token(
        user=lab.alice, name="ci", scope="read", days=30, acting_user=lab.alice
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {made.plaintext}")
    assert client.get(reverse("api-run-list")).status_code == 200
    assert api_actions.do_revoke_token(made.token, acting_user=lab.alice) is True
    response = client.get(reverse("api-run-list"))
    assert response.status_code == 401
    assert "revoked" in error(response)["message"]
    assert api_actions.do_revoke_token(made.token, acting_user=lab.alice) is False


def test_a_deactivated_account_s_tokens_stop_working(lab: Lab) -> None:
    client = api(lab.alice)
    User.objects.filter(pk=lab.alice.pk).update(is_active=False)
    assert client.get(reverse("api-me")).status_code == 401


def test_token_lifetime_and_scope_are_validated(lab: Lab) -> None:
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        api_actions.check_create_token(
            user=lab.alice, name="x", scope="read", days=10_000, acting_user=lab.alice
        )
    with pytest.raises(ValidationError):
        api_actions.check_create_token(
            user=lab.alice, name="x", scope="root", days=1, acting_user=lab.alice
        )


# --- scopes ---------------------------------------------------------------------------------------


def test_a_read_token_reads_but_cannot_submit(lab: Lab) -> None:
    client = api(lab.alice, "read")
    assert client.get(reverse("api-run-list")).status_code == 200
    response = post(client, reverse("api-run-list"), {"project": "induction", "config": {}})
    assert response.status_code == 403
    assert error(response)["code"] == "insufficient_scope"
    assert Run.objects.count() == 0


def test_a_submit_token_submits_but_cannot_take_disclosure_steps(lab: Lab) -> None:
    client = api(lab.alice, "submit")
    response = post(
        client, reverse("api-run-list"), {"project": "induction", "config": tiny_config()}
    )
    assert response.status_code == 201
    finding = factories.make_finding(lab.project, tier=Tier.TEAM)
    response = post(client, reverse("api-finding-request-review", args=[finding.pk]))
    assert response.status_code == 403
    assert error(response)["code"] == "insufficient_scope"


def test_a_manage_token_takes_disclosure_steps(lab: Lab) -> None:
    finding = factories.make_finding(lab.project, tier=Tier.TEAM)
    client = api(lab.alice, "manage")
    response = post(client, reverse("api-finding-request-review", args=[finding.pk]))
    assert response.status_code == 201, response.content
    assert response.json()["target_tier"] == Tier.REVIEW


def test_a_scope_never_widens_what_the_account_may_do(lab: Lab) -> None:
    """bob's manage token still cannot touch alice's project: 404, as for anything unseen."""
    run = factories.make_run(lab.project)
    client = api(lab.bob, "manage")
    assert post(client, reverse("api-run-cancel", args=[run.pk])).status_code == 404
    assert client.get(reverse("api-run-detail", args=[run.pk])).status_code == 404


def test_the_browser_session_works_and_csrf_is_enforced_on_writes(lab: Lab) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(lab.alice)
    assert client.get(reverse("api-me")).json()["auth"] == "session"
    response = post(client, reverse("api-run-list"), {"project": "induction", "config": {}})
    assert response.status_code == 403
    assert "CSRF" in error(response)["message"]


def test_a_token_request_needs_no_csrf_token(lab: Lab) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token(lab.alice)}")
    response = post(
        client, reverse("api-run-list"), {"project": "induction", "config": tiny_config()}
    )
    assert response.status_code == 201


# --- rate limits ----------------------------------------------------------------------------------


def test_each_token_has_its_own_rate_limit(lab: Lab, settings: Any) -> None:
    settings.H3LAB_API_RATES = {"token": "3/minute", "anon": None}
    first, second = api(lab.alice, "read"), api(lab.alice, "read")
    codes = [first.get(reverse("api-me")).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = first.get(reverse("api-me"))
    assert error(limited)["code"] == "throttled"
    assert int(limited["Retry-After"]) > 0
    assert second.get(reverse("api-me")).status_code == 200  # another token, another budget


def test_anonymous_readers_are_limited_per_address(lab: Lab, settings: Any) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": "2/minute"}
    client = APIClient()
    codes = [client.get(reverse("api-finding-list")).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# --- runs -----------------------------------------------------------------------------------------


def test_a_member_submits_a_run_built_from_its_preset(lab: Lab) -> None:
    body = {
        "project": "induction",
        "experiment": "sweep",
        "name": "lr 1e-3",
        "config": {
            "preset": "attention",
            "task": {"name": "induction_head", "vocab_size": 8, "seq_len": 12},
            "train": {"steps": 10, "lr": 1e-3},
        },
        "n_layer": 3,
        "d_model": 32,
    }
    response = post(api(lab.alice, "submit"), reverse("api-run-list"), body)
    assert response.status_code == 201, response.content
    run = Run.objects.get()
    assert response["Location"] == reverse("api-run-detail", args=[run.pk])
    data = response.json()
    assert (data["status"], data["project"], data["experiment"]) == ("queued", "induction", "sweep")
    assert data["preset"] == "attention"
    assert len(run.config["model"]["mixers"]) == 3
    assert run.config["model"]["d_model"] == 32
    assert run.created_by == lab.alice
    assert AuditEntry.objects.filter(action="run.submit", actor=lab.alice).exists()


def test_config_errors_come_back_as_dotted_field_errors(lab: Lab) -> None:
    config = {"task": {"name": "induction_head", "seq_len": "long"}, "train": {"steps": 0}}
    response = post(
        api(lab.alice), reverse("api-run-list"), {"project": "induction", "config": config}
    )
    assert response.status_code == 400
    err = error(response)
    assert err["code"] == "validation_error"
    assert "config.task.seq_len" in err["fields"]
    assert "config.train.steps" in err["fields"] or "config.task.seq_len" in err["message"]


def test_serializer_errors_and_unknown_sections_share_the_error_body(lab: Lab) -> None:
    response = post(api(lab.alice), reverse("api-run-list"), {"config": {"bogus": {}}})
    assert response.status_code == 400
    assert set(error(response)["fields"]) == {"project"}
    response = post(
        api(lab.alice), reverse("api-run-list"), {"project": "induction", "config": {"bogus": 1}}
    )
    assert response.status_code == 400
    assert "config.config" in error(response)["fields"]


def test_submitting_to_a_project_you_are_not_in_looks_like_a_missing_project(lab: Lab) -> None:
    client = api(lab.bob)
    theirs = post(client, reverse("api-run-list"), {"project": "induction", "config": {}})
    missing = post(client, reverse("api-run-list"), {"project": "nope", "config": {}})
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()


def test_a_text_task_may_only_read_a_file_uploaded_to_the_project(lab: Lab) -> None:
    config = {"task": {"name": "text", "path": "/etc/passwd", "vocab_size": 256}}
    client = api(lab.alice)
    response = post(client, reverse("api-run-list"), {"project": "induction", "config": config})
    assert response.status_code == 400
    assert "config.task.path" in error(response)["fields"]
    sneaky = {"task": {"name": "text", "path": "../recall/x.txt", "vocab_size": 256}}
    response = post(client, reverse("api-run-list"), {"project": "induction", "config": sneaky})
    assert response.status_code == 400

    folder = corpus_dir(lab.project)
    folder.mkdir(parents=True)
    (folder / "shakespeare.txt").write_text("to be or not to be " * 50)
    ok = {"task": {"name": "text", "path": "shakespeare.txt", "vocab_size": 256, "seq_len": 16}}
    response = post(client, reverse("api-run-list"), {"project": "induction", "config": ok})
    assert response.status_code == 201, response.content
    assert Run.objects.get().config["task"]["path"] == str((folder / "shakespeare.txt").resolve())


def test_nul_characters_and_non_finite_numbers_are_field_errors(lab: Lab) -> None:
    client = api(lab.alice)
    config = {"preset": "h3\x00", "train": {"lr": 1e400}}
    response = post(client, reverse("api-run-list"), {"project": "induction", "config": config})
    assert response.status_code == 400


def test_runs_are_listed_filtered_and_paginated(lab: Lab, django_assert_num_queries: Any) -> None:
    for status in ("queued", "running", "succeeded", "succeeded"):
        factories.make_run(lab.project, status=status, user=lab.alice)
    factories.make_run(lab.other_project)
    client = api(lab.alice)
    # Queries: token lookup, last-used update, the user's roles (their team projects, read
    # once per request), then the page (runs joined to project, experiment and author) and
    # its count.
    with django_assert_num_queries(5):
        response = client.get(reverse("api-run-list"), {"status": "succeeded", "page_size": "1"})
    body = response.json()
    assert body["count"] == 2
    assert len(body["results"]) == 1
    assert body["next"] is not None
    all_runs = client.get(reverse("api-run-list")).json()
    assert all_runs["count"] == 4  # never the other project's run
    bad = client.get(reverse("api-run-list"), {"status": "exploded"})
    assert bad.status_code == 400
    assert "status" in error(bad)["fields"]


def test_run_detail_reports_progress_and_lists_artifacts(lab: Lab, tmp_path: Path) -> None:
    run = factories.make_run(
        lab.project, status=RunStatus.RUNNING, step=5, loss=math.nan, eta_s=12.0
    )
    src = tmp_path / "train.log"
    src.write_text("step 1\nstep 2\n")
    store_file(run, src, "train.log").save()
    body = api(lab.alice).get(reverse("api-run-detail", args=[run.pk])).json()
    assert body["status"] == "running"
    assert body["active"] is True
    assert body["fraction"] == 0.25
    assert body["loss"] is None  # NaN is not JSON
    assert body["artifacts"][0]["name"] == "train.log"
    assert body["artifacts"][0]["download_url"].endswith("/download/")


def test_metrics_page_by_whole_steps_and_filter_by_name(lab: Lab) -> None:
    run = factories.make_run(lab.project)
    factories.add_metrics(run, "train_loss", [3.0, 2.0, 1.0, math.inf])
    factories.add_metrics(run, "test_accuracy", [0.1, 0.5, 0.9, 1.0])
    client = api(lab.alice)
    url = reverse("api-run-metrics", args=[run.pk])

    first = client.get(url, {"limit": 2}).json()
    assert first["names"] == ["test_accuracy", "train_loss"]
    assert [(p["step"], p["name"]) for p in first["points"]] == [
        (0, "test_accuracy"),
        (0, "train_loss"),
        (10, "test_accuracy"),
        (10, "train_loss"),
    ]
    assert first["next_after_step"] == 10
    rest = client.get(url, {"limit": 2, "after_step": 10}).json()
    assert [p["step"] for p in rest["points"]] == [20, 20, 30, 30]
    assert rest["next_after_step"] is None
    assert rest["points"][-1]["value"] is None  # inf

    only = client.get(url, {"name": "train_loss", "after_step": "0"}).json()
    assert {p["name"] for p in only["points"]} == {"train_loss"}
    assert [p["step"] for p in only["points"]] == [10, 20, 30]


def test_logs_return_the_tail_of_the_log_artifact_and_the_error(lab: Lab, tmp_path: Path) -> None:
    run = factories.make_run(lab.project, status=RunStatus.FAILED, error="boom", traceback="tb")
    src = tmp_path / "train.log"
    src.write_text("\n".join(f"line {i}" for i in range(300)))
    store_file(run, src, "train.log").save()
    body = api(lab.alice).get(reverse("api-run-logs", args=[run.pk]), {"tail": 3}).json()
    assert body["lines"] == ["line 297", "line 298", "line 299"]
    assert (body["source"], body["error"], body["traceback"]) == ("train.log", "boom", "tb")


def test_cancel_is_idempotent(lab: Lab) -> None:
    run = factories.make_run(lab.project, status=RunStatus.QUEUED)
    client = api(lab.alice, "submit")
    first = post(client, reverse("api-run-cancel", args=[run.pk])).json()
    again = post(client, reverse("api-run-cancel", args=[run.pk])).json()
    assert (first["cancelled"], first["run"]["status"]) == (True, "cancelled")
    assert again["cancelled"] is False
    assert AuditEntry.objects.filter(action="run.cancel").count() == 1


def test_rerun_repeats_the_config_with_overrides(lab: Lab) -> None:
    source = factories.make_run(lab.project, name="base")
    response = post(
        api(lab.alice, "submit"),
        reverse("api-run-rerun", args=[source.pk]),
        {"config": {"train": {"lr": 0.01}}},
    )
    assert response.status_code == 201, response.content
    run = Run.objects.exclude(pk=source.pk).get()
    assert run.rerun_of == source
    assert run.name == "base (again)"
    assert run.config["train"]["lr"] == 0.01
    assert run.config["train"]["steps"] == source.config["train"]["steps"]


def test_an_out_of_range_id_is_not_found_not_a_server_error(lab: Lab) -> None:
    client = api(lab.alice)
    assert client.get("/api/v1/runs/99999999999999999999999/").status_code == 404
    assert client.get(reverse("api-artifact-list"), {"run": 2**70}).status_code == 400


# --- artifacts ------------------------------------------------------------------------------------


def _artifact(run: Run, tmp_path: Path, name: str = "probe.json") -> Artifact:
    src = tmp_path / name
    src.write_text('{"accuracy": 0.97}')
    artifact = store_file(run, src, name)
    artifact.save()
    return artifact


def test_download_streams_the_bytes_and_is_audited(lab: Lab, tmp_path: Path) -> None:
    artifact = _artifact(factories.make_run(lab.project), tmp_path)
    response = api(lab.alice, "read").get(
        reverse("api-artifact-download", args=[artifact.pk]), HTTP_ACCEPT="application/json"
    )
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    data = b"".join(response.streaming_content)
    assert data == b'{"accuracy": 0.97}'
    assert response["Content-Type"] == "application/octet-stream"
    assert response["X-Checksum-SHA256"] == hashlib.sha256(data).hexdigest()
    assert 'filename="probe.json"' in response["Content-Disposition"]
    assert "no-store" in response["Cache-Control"]
    entry = AuditEntry.objects.get(action="artifact.download")
    assert entry.actor == lab.alice
    assert entry.object_id == str(artifact.pk)


def test_public_evidence_downloads_anonymously_and_private_artifacts_do_not(
    lab: Lab, tmp_path: Path
) -> None:
    run = factories.make_run(lab.project)
    public, private = _artifact(run, tmp_path, "a.json"), _artifact(run, tmp_path, "b.json")
    factories.make_finding(lab.project, tier=Tier.PUBLIC).artifacts.add(public)
    client = APIClient()
    assert client.get(reverse("api-artifact-download", args=[public.pk])).status_code == 200
    assert client.get(reverse("api-artifact-download", args=[private.pk])).status_code == 404
    listed = client.get(reverse("api-artifact-list")).json()
    assert [a["id"] for a in listed["results"]] == [public.pk]


# --- findings -------------------------------------------------------------------------------------


def test_a_member_records_a_finding_from_runs_with_evidence(lab: Lab, tmp_path: Path) -> None:
    run = factories.make_run(lab.project)
    factories.add_metrics(run, "test_accuracy", [0.2, 0.99])
    artifact = _artifact(run, tmp_path)
    body = {
        "title": "Induction heads form at step 10",
        "body": "**Sharp** transition.",
        "runs": [run.pk],
        "artifacts": [artifact.pk],
        "metrics": ["test_accuracy"],
    }
    response = post(api(lab.alice, "submit"), reverse("api-finding-list"), body)
    assert response.status_code == 201, response.content
    data = response.json()
    assert (data["tier"], data["status"], data["project"]) == (0, "draft", "induction")
    assert data["runs"] == [run.pk]
    assert data["artifacts"] == [artifact.pk]
    assert data["snapshots"] == [
        {"run": run.pk, "name": "test_accuracy", "step": 10, "value": 0.99}
    ]


def test_a_finding_cannot_cite_runs_the_author_cannot_see(lab: Lab) -> None:
    theirs = factories.make_run(lab.other_project)
    body = {"title": "t", "body": "b", "runs": [theirs.pk]}
    response = post(api(lab.alice), reverse("api-finding-list"), body)
    assert response.status_code == 400
    assert "runs.0" in error(response)["fields"] or "runs" in error(response)["fields"]
    assert Finding.objects.count() == 0


def test_a_member_edits_a_finding_and_the_edit_is_audited(lab: Lab) -> None:
    finding = factories.make_finding(lab.project)
    url = reverse("api-finding-detail", args=[finding.pk])
    response = api(lab.alice, "submit").patch(
        url, json.dumps({"title": "Better title"}), content_type="application/json"
    )
    assert response.status_code == 200
    assert response.json()["title"] == "Better title"
    assert AuditEntry.objects.filter(action="finding.edit").exists()


def test_reading_a_restricted_finding_is_audited_and_a_retracted_one_is_gone(
    cast: Cast,
) -> None:
    finding = factories.make_finding(cast.lab.project, tier=Tier.REVIEW)
    client = api(cast.rita, "read")
    assert client.get(reverse("api-finding-detail", args=[finding.pk])).status_code == 200
    assert AuditEntry.objects.filter(action="finding.view", actor=cast.rita).count() == 1
    Finding.objects.filter(pk=finding.pk).update(
        status="retracted", retracted_at=timezone.now(), retraction_reason="wrong seed"
    )
    response = client.get(reverse("api-finding-detail", args=[finding.pk]))
    assert response.status_code == 410
    assert "wrong seed" in error(response)["message"]


def test_findings_list_matches_the_tier_table(cast: Cast, django_assert_num_queries: Any) -> None:
    findings = {t: factories.make_finding(cast.lab.project, tier=t) for t in Tier}
    anonymous = APIClient().get(reverse("api-finding-list")).json()
    assert [f["id"] for f in anonymous["results"]] == [findings[Tier.PUBLIC].pk]
    client = api(cast.carol, "read")
    # token lookup + last-used update, the page and its count, then run ids, artifact ids
    # and snapshots of the page.
    with django_assert_num_queries(7):
        body = client.get(reverse("api-finding-list")).json()
    assert {f["id"] for f in body["results"]} == {
        findings[Tier.PARTNERS].pk,
        findings[Tier.PUBLIC].pk,
    }
    only = client.get(reverse("api-finding-list"), {"tier": Tier.PUBLIC}).json()
    assert [f["id"] for f in only["results"]] == [findings[Tier.PUBLIC].pk]


def test_review_through_the_api(cast: Cast) -> None:
    """Request review, assess, request the partners step, read the request with its gate."""
    finding = factories.make_finding(cast.lab.project, tier=Tier.TEAM)
    alice, rita = api(cast.lab.alice), api(cast.rita)
    assert post(alice, reverse("api-finding-request-review", args=[finding.pk])).status_code == 201
    finding.refresh_from_db()
    assert finding.tier == Tier.REVIEW

    assessment = {
        "capability_uplift": 1,
        "alignment_value": 3,
        "rationale": "Mostly explains an existing mechanism.",
        "categories": ["interpretability"],
        "evidence_links": ["https://example.org/paper"],
    }
    url = reverse("api-finding-assessments", args=[finding.pk])
    response = post(rita, url, assessment)
    assert response.status_code == 201, response.content
    assert response.json()["reviewer"] == "rita"
    bad = post(rita, url, {**assessment, "evidence_links": ["javascript:alert(1)"]})
    assert bad.status_code == 400
    assert "evidence_links.0" in error(bad)["fields"]
    assert [a["reviewer"] for a in alice.get(url).json()] == ["rita"]
    assert post(alice, url, assessment).status_code == 404  # the team does not review itself

    response = post(
        alice, reverse("api-finding-request-release", args=[finding.pk]), {"rationale": "ready"}
    )
    assert response.status_code == 201, response.content
    assert response.json()["target_tier"] == Tier.PARTNERS
    again = post(alice, reverse("api-finding-request-release", args=[finding.pk]))
    assert again.status_code == 400
    assert "already pending" in error(again)["message"]

    requests = alice.get(reverse("api-finding-release-requests", args=[finding.pk])).json()
    pending = [r for r in requests if r["state"] == "open"]
    assert len(pending) == 1
    assert pending[0]["gate"]  # approvals still missing
    assert ReleaseRequest.objects.filter(finding=finding).count() == 2


# --- grants ---------------------------------------------------------------------------------------


def test_a_release_manager_grants_and_revokes_access(cast: Cast) -> None:
    mara = api(cast.mara)
    expires = (timezone.now() + timedelta(days=10)).isoformat()
    body = {"user": "charlie", "project": "induction", "max_tier": 2, "expires_at": expires}
    response = post(mara, reverse("api-grant-list"), body)
    assert response.status_code == 201, response.content
    grant = Grant.objects.get(pk=response.json()["id"])
    assert (grant.user, grant.granted_by) == (cast.lab.charlie, cast.mara)
    listed = mara.get(reverse("api-grant-list")).json()
    assert grant.pk in [g["id"] for g in listed["results"]]

    both = post(mara, reverse("api-grant-list"), {**body, "group": "review-board"})
    assert both.status_code == 400
    revoked = post(mara, reverse("api-grant-revoke", args=[grant.pk]), {"reason": "ended"})
    assert revoked.status_code == 200
    assert revoked.json()["active"] is False
    assert api(cast.lab.alice).get(reverse("api-grant-list")).status_code == 404


# --- token pages ----------------------------------------------------------------------------------


def test_the_token_page_shows_a_new_token_once(lab: Lab) -> None:
    client = login(lab.alice)
    response = client.post(reverse("tokens"), {"name": "laptop", "scope": "submit", "days": 30})
    assert response.status_code == 200
    plaintext = response.context["created"].plaintext
    assert plaintext.encode() in response.content
    assert "no-store" in response["Cache-Control"]
    again = client.get(reverse("tokens"))
    assert plaintext.encode() not in again.content
    assert b"laptop" in again.content
    me = APIClient().get(reverse("api-me"), HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert me.json()["scope"] == "submit"


def test_only_the_owner_revokes_a_token_on_the_page(lab: Lab) -> None:
    made = api_actions.do_create_token(
        user=lab.alice, name="x", scope="read", days=1, acting_user=lab.alice
    )
    url = reverse("token-revoke", args=[made.token.pk])
    assert login(lab.bob).post(url).status_code == 404
    assert Client().post(url).status_code == 302  # to the login page
    assert login(lab.alice).post(url).status_code == 302
    made.token.refresh_from_db()
    assert made.token.revoked_at is not None


# --- schema and docs ------------------------------------------------------------------------------


def test_the_schema_and_the_docs_are_served_without_a_cdn(lab: Lab) -> None:
    client = Client()
    schema = client.get(reverse("api-schema"), HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    spec = json.loads(schema.content)
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/runs/{id}/metrics/" in spec["paths"]
    for name in ("api-docs", "api-redoc"):
        page = client.get(reverse(name))
        assert page.status_code == 200
        assert b"cdn.jsdelivr.net" not in page.content
        assert b"/static/drf_spectacular_sidecar/" in page.content


# --- exports and unavailable content --------------------------------------------------------------


def test_a_release_manager_downloads_an_export_and_the_download_is_audited(cast: Cast) -> None:
    from tests.test_permission_matrix import ready_export

    finding = factories.make_finding(cast.lab.project, tier=Tier.PUBLIC)
    export = ready_export(cast, finding)
    mara = api(cast.mara, "read")
    assert mara.get(reverse("api-export-detail", args=[export.pk])).json()["status"] == "succeeded"
    response = mara.get(reverse("api-export-download", args=[export.pk]))
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert b"".join(response.streaming_content) == b"bundle"
    assert response["Content-Type"] == "application/gzip"
    assert AuditEntry.objects.filter(action__startswith="export.download").exists()
    assert api(cast.carol).get(reverse("api-export-download", args=[export.pk])).status_code == 404


def test_a_refused_export_lists_its_blockers_as_field_errors(cast: Cast) -> None:
    finding = factories.make_finding(cast.lab.project, tier=Tier.REVIEW)
    response = post(
        api(cast.mara), reverse("api-export-list"), {"kind": "public", "findings": [finding.pk]}
    )
    assert response.status_code == 400
    err = error(response)
    assert err["message"].startswith("Export refused")
    assert any(str(finding.pk) in name for name in err["fields"])


@pytest.mark.parametrize(("reason", "status"), [("destroyed", 410), ("key", 503)])
def test_artifact_bytes_that_cannot_be_produced_answer_410_or_503(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reason: str, status: int
) -> None:
    from experiments.storage import ArtifactUnavailable

    artifact = _artifact(factories.make_run(lab.project), tmp_path)

    def unavailable(_: Any) -> Any:
        raise ArtifactUnavailable(reason, "detail for the operators")

    monkeypatch.setattr("api.views.artifacts.open_artifact", unavailable)
    response = api(lab.alice).get(reverse("api-artifact-download", args=[artifact.pk]))
    assert response.status_code == status
    assert "detail for the operators" not in error(response)["message"]
    assert not AuditEntry.objects.filter(action="artifact.download").exists()


def test_patching_a_public_finding_answers_with_a_pending_revision_and_readers_keep_the_text(
    cast: Cast,
) -> None:
    from tests.publishing import promote

    finding = promote(cast, factories.make_finding(cast.lab.project, body="RELEASED TEXT"))
    url = reverse("api-finding-detail", args=[finding.pk])
    response = api(cast.lab.alice, "submit").patch(
        url, json.dumps({"body": "UNREVIEWED TEXT"}), content_type="application/json"
    )
    assert response.status_code == 202
    assert (response.json()["state"], response.json()["body"]) == ("pending", "UNREVIEWED TEXT")
    public = Client().get(url).json()
    assert public["body"] == "RELEASED TEXT"
    assert "UNREVIEWED TEXT" not in Client().get(finding.get_absolute_url()).content.decode()
    # the public sees the public-tier history only; the team sees the pending revision too
    public_revisions = Client().get(reverse("api-finding-revisions", args=[finding.pk])).json()
    assert [r["state"] for r in public_revisions] == ["approved"]
    team = api(cast.lab.alice, "read").get(reverse("api-finding-revisions", args=[finding.pk]))
    assert [r["state"] for r in team.json()][-1] == "pending"

"""A fresh deployment set up and used end to end in a browser, with no shell after the first
superuser: the lab admin enrols a second factor, creates accounts (admin) and a project with its
team (Lab pages); a researcher signs in, trains a run on a real worker, records a finding from
it and sends it to review; the admin sees it shared with reviewers."""

from __future__ import annotations

import base64
import importlib
import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django_otp.oath import totp

from disclosure.models import AuditEntry
from experiments.models import Finding, Project, Run, RunStatus, Tier
from tests.e2e.conftest import wait_for

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(600),
]

PASSWORD = "a long enough passphrase 42"


def current_code(secret: str) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return f"{totp(key, step=30, t0=0, digits=6):06d}"


def sign_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def test_a_fresh_lab_is_set_up_and_used_without_a_shell(
    live_server: Any, start_worker: Any, page: Any
) -> None:
    # What `migrate` leaves in a fresh database (the role groups and release policy v1 of
    # migration disclosure.0003): a live-server test runs in a database flushed after the
    # previous transactional test, which those rows do not survive.
    from django.apps import apps

    importlib.import_module("disclosure.migrations.0003_roles_and_policy_v1").forward(apps, None)
    get_user_model().objects.create_superuser("root", "root@lab.test", PASSWORD)  # the one step
    base = live_server.url
    start_worker()

    # The lab admin signs in and must enrol a second factor first.
    sign_in(page, base, "root")
    assert "/accounts/2fa/enrol/" in page.url
    secret = page.locator("p:has-text('Key:') code").inner_text().strip()
    page.fill("input[name=otp_token]", current_code(secret))
    page.click("form.stack button[type=submit]")
    page.get_by_text("I have saved them").click()

    # Accounts in the admin, then a project and its team on the Lab pages.
    page.goto(f"{base}/admin/auth/user/add/")
    page.fill("input[name=username]", "alice")
    if page.locator("input[name=usable_password][value=true]").count():
        page.check("input[name=usable_password][value=true]")
    page.fill("input[name=password1]", PASSWORD)
    page.fill("input[name=password2]", PASSWORD)
    page.click("input[name=_save]")
    page.wait_for_url(lambda url: "/change/" in url)
    page.goto(f"{base}/lab/")
    page.fill("input[name=slug]", "recall-probes")
    page.fill("input[name=name]", "Recall probes")
    page.click("form.card button[type=submit]")
    page.wait_for_url(lambda url: url.endswith("/projects/recall-probes/team/"))
    page.fill("input[name=username]", "alice")
    page.select_option("select[name=op]", "add")
    page.click("form.card button[type=submit]")
    page.get_by_text("alice joined the team.").wait_for()
    project = Project.objects.get(slug="recall-probes")
    assert list(project.group.user_set.values_list("username", flat=True)) == ["alice"]

    # The researcher, in a browser of her own: a run, a finding, a review request.
    alice = page.context.browser.new_context().new_page()
    alice.set_default_timeout(60_000)
    sign_in(alice, base, "alice")
    alice.goto(f"{base}/projects/recall-probes/runs/new/")
    alice.fill("input[name=experiment]", "first")
    alice.fill("input[name=name]", "first run")
    alice.select_option("select[name=task]", "associative_recall")
    for field, value in {"vocab_size": "8", "seq_len": "9", "d_model": "16", "n_layer": "1",
                         "steps": "30", "batch_size": "8"}.items():  # fmt: skip
        alice.fill(f"input[name={field}]", value)
    alice.click("form.run-form button[type=submit]")
    alice.wait_for_url(lambda url: "/runs/" in url and "/new/" not in url)
    alice.locator("[data-status] .badge").filter(has_text="succeeded").wait_for(timeout=240_000)
    run = Run.objects.get(name="first run")
    assert run.status == RunStatus.SUCCEEDED
    alice.reload()
    alice.get_by_text("Record a finding").click()
    alice.fill("input[name=title]", "Recall forms in one layer")
    alice.fill("textarea[name=body]", "The run recalls keys after 30 steps.")
    alice.get_by_text("Record finding").click()
    # The finding's own page (/findings/<id>/), not the form's URL (/runs/<id>/findings/new/).
    alice.wait_for_url(re.compile(r"/findings/\d+/$"))
    alice.get_by_text("Send to the review board").wait_for()
    with alice.expect_navigation():
        alice.get_by_text("Send to the review board").click()
    finding = wait_for(
        lambda: Finding.objects.filter(title="Recall forms in one layer", tier=Tier.REVIEW).first(),
        timeout=60,
        what="the finding to reach the review tier",
    )
    assert "Shared with reviewers" in alice.locator(".page-head").inner_text()
    assert list(finding.runs.all()) == [run]

    # Back to the admin: the finding is listed, shared with reviewers; every step was audited.
    page.goto(f"{base}/findings/")
    row = page.locator("tr, li").filter(has_text="Recall forms in one layer").first
    assert "Shared with reviewers" in row.inner_text()
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"project.create", "project.add_member", "run.submit", "run.succeed",
            "finding.create", "release.request"} <= actions  # fmt: skip

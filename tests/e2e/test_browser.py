"""A researcher's path in a real browser: sign in, submit a job through the form, watch the run
page follow it live until it finishes, with the site's Content-Security-Policy refusing
nothing the pages need (a refusal is a console error). Headless Chromium (the system package;
no Playwright browser download) against ``live_server`` and a real Celery worker."""

from __future__ import annotations

from typing import Any

import pytest

from experiments.models import Run, RunStatus
from tests import factories
from tests.conftest import Lab

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(600),
]


def test_a_researcher_submits_a_job_and_watches_it_finish(
    lab: Lab, live_server: Any, start_worker: Any, page: Any
) -> None:
    start_worker()
    base = live_server.url
    refused: list[str] = []
    page.on(
        "console",
        lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None,
    )

    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", factories.PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)

    page.goto(f"{base}/projects/{lab.project.slug}/runs/new/")
    page.fill("input[name=experiment]", "browser")
    page.fill("input[name=name]", "submitted from a browser")
    page.select_option("select[name=preset]", "h3")
    page.select_option("select[name=task]", "induction_head")
    for field, value in {
        "vocab_size": "8",
        "seq_len": "12",
        "d_model": "16",
        "n_layer": "1",
        "steps": "40",
        "lr": "0.003",
        "batch_size": "8",
        "seed": "1",
    }.items():
        page.fill(f"input[name={field}]", value)
    page.select_option("select[name=queue]", "cpu")
    page.click("form.run-form button[type=submit]")

    page.wait_for_url(lambda url: "/runs/" in url and "/new/" not in url)
    run = Run.objects.get(name="submitted from a browser")
    assert page.url.rstrip("/").endswith(f"/runs/{run.pk}")
    assert run.project == lab.project and run.total_steps == 40

    # No navigation from here on: the page's own polling must bring the final state in.
    badge = page.locator("[data-status] .badge")
    badge.filter(has_text="succeeded").wait_for(timeout=240_000)
    assert page.locator("[data-field=stepline]").inner_text().strip() == "Step 40 / 40"
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED
    # The bar's width comes from app.js/run.js through the CSSOM, not a style attribute.
    width = page.locator("[data-field=bar]").evaluate("el => el.style.width")
    assert width in ("100%", "100.0%")

    for url in ("/runs/", f"/runs/compare/?ids={run.pk}", "/findings/", "/access/"):
        page.goto(f"{base}{url}")
        page.wait_for_load_state("load")
    assert refused == []

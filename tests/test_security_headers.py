"""Security headers on every page, templates that a strict CSP allows, and Markdown images
only from the lab's own origin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.test import Client
from django.test.utils import override_settings

from experiments.markdown import render_markdown
from tests import factories
from tests.conftest import Lab, login
from web.middleware import CONTENT_SECURITY_POLICY

ROOT = Path(__file__).resolve().parents[1]
STRICT = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@pytest.mark.parametrize("url", ["/", "/findings/", "/accounts/login/", "/keys/"])
def test_every_html_page_carries_the_strict_policy_and_headers(db: None, url: str) -> None:
    response = Client().get(url)
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == STRICT == CONTENT_SECURITY_POLICY
    assert response["Referrer-Policy"] == "same-origin"
    for feature in ("camera=()", "microphone=()", "geolocation=()", "interest-cohort=()"):
        assert feature in response["Permissions-Policy"]


def test_pages_of_a_signed_in_researcher_carry_the_policy(lab: Lab) -> None:
    run = factories.make_run(lab.project)
    for url in ("/runs/", f"/runs/{run.pk}/", "/access/", f"/runs/compare/?ids={run.pk}"):
        response = login(lab.alice).get(url)
        assert response.status_code == 200, url
        assert response["Content-Security-Policy"] == STRICT, url


def test_json_responses_get_permissions_policy_but_no_page_policy(lab: Lab) -> None:
    run = factories.make_run(lab.project)
    response = login(lab.alice).get(f"/runs/{run.pk}/progress.json")
    assert "Content-Security-Policy" not in response
    assert "camera=()" in response["Permissions-Policy"]


@pytest.mark.parametrize("url", ["/api/docs/", "/api/redoc/"])
def test_the_api_docs_keep_scripts_to_this_origin(db: None, url: str) -> None:
    response = Client().get(url)
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    assert "script-src 'self';" in policy
    assert "frame-ancestors 'none'" in policy
    # Swagger UI's start-up script is a same-origin file, not an inline block.
    assert re.search(rb"<script>\s*\S", response.content) is None


def test_templates_hold_no_inline_script_handler_or_style() -> None:
    offenders = []
    for path in sorted((ROOT / "templates").rglob("*.html")) + sorted(
        (ROOT / "api" / "templates").rglob("*.html")
    ):
        text = path.read_text()
        for pattern in (
            r"<script(?![^>]*\bsrc=)[^>]*>",
            r"\son[a-z]+\s*=",
            r"\sstyle\s*=",
            r"<style",
        ):
            if re.search(pattern, text, flags=re.IGNORECASE):
                offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert offenders == []


# --- Markdown images ----------------------------------------------------------------------------


@override_settings(H3LAB_SITE_URL="https://lab.example.org")
@pytest.mark.parametrize(
    "src",
    ["/static/h3lab/logo.svg", "figures/attention.png", "https://lab.example.org/static/a.png"],
)
def test_an_image_from_the_lab_itself_is_kept(src: str) -> None:
    html = render_markdown(f"![heads]({src})")
    assert f'src="{src}"' in html


@override_settings(H3LAB_SITE_URL="https://lab.example.org")
@pytest.mark.parametrize(
    "src",
    [
        "https://tracker.example/pixel.png",
        "http://lab.example.org/a.png",  # another scheme is another origin
        "https://lab.example.org.evil.example/a.png",
        "//tracker.example/pixel.png",
        "/\\tracker.example/pixel.png",
    ],
)
def test_an_image_from_anywhere_else_becomes_a_link(src: str) -> None:
    html = render_markdown(f"![pixel]({src})")
    assert "<img" not in html
    assert 'rel="noopener noreferrer nofollow">pixel</a>' in html


@override_settings(H3LAB_SITE_URL="https://lab.example.org")
def test_a_raw_html_image_with_a_tricky_alt_is_still_caught() -> None:
    html = render_markdown('<img alt="a>b" src="https://tracker.example/p.png"> and <img src=x>')
    assert "tracker.example" not in html.split("<a ")[0]
    assert "<img" in html  # the relative one stays
    assert '<img alt="a>b" src="https://tracker' not in html

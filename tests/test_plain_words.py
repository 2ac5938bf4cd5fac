"""Pages a reviewer reads at a glance: tiers in plain words, gates that say what is missing,
timelines in sentences, and friendly 404 and 500 pages that reveal nothing."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from disclosure.actions.release import do_request_release, do_request_review
from disclosure.gates import gate_reasons
from tests import factories
from tests.conftest import Cast, login

pytestmark = pytest.mark.django_db


def test_a_finding_page_speaks_plainly(cast: Cast) -> None:
    finding = factories.make_finding(
        cast.lab.project, title="Copy heads", created_by=cast.lab.alice
    )
    do_request_review(finding, acting_user=cast.lab.alice)
    finding.refresh_from_db()
    request = do_request_release(finding, acting_user=cast.lab.alice)
    page = login(cast.lab.alice).get(finding.get_absolute_url()).content.decode()
    assert "Shared with reviewers" in page
    assert "asked to share it more widely (shared with partners)" in page
    assert "finding.create" not in page and "release.request" not in page
    assert any(r.startswith("awaiting ") and "more approval" in r for r in gate_reasons(request))


def test_a_missing_page_is_friendly_and_the_same_for_forbidden(cast: Cast) -> None:
    private = factories.make_finding(cast.lab.project, title="Private", created_by=cast.lab.alice)
    c = login(cast.lab.bob)
    forbidden = c.get(private.get_absolute_url())
    missing = c.get(reverse("finding", args=[private.pk + 1000]))
    assert forbidden.status_code == missing.status_code == 404
    assert "Nothing here" in forbidden.content.decode()
    assert forbidden.content == missing.content
    assert "log in" in Client().get("/no-such-page/").content.decode()


@override_settings(DEBUG=False)
def test_a_server_error_page_needs_nothing_but_the_template() -> None:
    from django.test import RequestFactory
    from django.views.defaults import server_error

    response = server_error(RequestFactory().get("/"))
    assert response.status_code == 500
    assert "Something went wrong on our side" in response.content.decode()

"""Layout in a real browser: the top bar fits on one row at 1280 px for the role with the most
links (a lab admin), and a finding page fits a 390 px phone screen without sideways scrolling."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from tests import factories
from tests.conftest import Cast, login

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(300),
]


def sign_in(page: Any, base: str, user: Any) -> None:
    """Carry a signed-in (second factor passed) session into the browser."""
    client = login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    page.context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": base}])


def overflow(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth - window.innerWidth"))


def test_the_top_bar_fits_one_row_at_1280_px(cast: Cast, live_server: Any, page: Any) -> None:
    admin = factories.make_user("ada", is_superuser=True, is_staff=True)
    factories.make_reviewer("ada-reviews").groups.first()  # a board exists, like in a real lab
    page.set_viewport_size({"width": 1280, "height": 800})
    sign_in(page, live_server.url, admin)
    page.goto(f"{live_server.url}/")
    tops = page.eval_on_selector_all(
        "ul.nav-links > li", "items => items.map(li => Math.round(li.getBoundingClientRect().top))"
    )
    assert len(tops) >= 10  # every role link is there
    assert len(set(tops)) == 1, f"the nav wraps onto {len(set(tops))} rows at 1280 px"
    links_end = page.evaluate(
        "Math.max(...[...document.querySelectorAll('ul.nav-links > li')]"
        ".map(li => li.getBoundingClientRect().right))"
    )
    account_start = page.evaluate(
        "document.querySelector('.nav-user').getBoundingClientRect().left"
    )
    assert links_end <= account_start, "the last nav link runs under the account buttons"
    assert overflow(page) <= 0


def test_a_finding_page_fits_a_phone(cast: Cast, live_server: Any, page: Any) -> None:
    finding = factories.make_finding(
        cast.lab.project,
        title="A rather long finding title about induction heads in hybrid H3 models",
        body="A body with a long URL https://example.org/" + "x" * 120 + "\n\n" + "text " * 200,
        created_by=cast.lab.alice,
    )
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, live_server.url, cast.lab.alice)
    page.goto(f"{live_server.url}{finding.get_absolute_url()}")
    assert page.locator("h1").inner_text().startswith("A rather long")
    assert overflow(page) <= 0, "the finding page scrolls sideways at 390 px"

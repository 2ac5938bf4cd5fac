"""The per-row helpers of the list pages print exactly what the template code they replace
printed (an included template per badge, Django's ``date`` filter)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from django.template import Context, Template

from disclosure.templatetags.disclosure_tags import tier_badge
from experiments.templatetags.lab import status_badge, utc_stamp


def render(source: str, **context: object) -> str:
    return Template(source).render(Context(context))


def test_utc_stamp_prints_what_the_date_filter_printed() -> None:
    for value in (
        datetime(2026, 12, 2, 9, 5, 7, 123, tzinfo=UTC),
        datetime(2026, 1, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=5))),
    ):
        assert utc_stamp(value) == render("{{ v|date:'Y-m-d H:i:s' }}", v=value)
    assert utc_stamp(None) == ""


def test_badges_keep_their_markup_and_escape_what_they_print() -> None:
    assert status_badge("running") == (
        '<span class="badge badge-running"><span class="pulse" aria-hidden="true"></span>'
        "running</span>"
    )
    assert status_badge("<b>") == '<span class="badge badge-&lt;b&gt;">&lt;b&gt;</span>'
    assert tier_badge(3) == '<span class="tier tier-3" title="public tier">Public</span>'
    assert render("{% load disclosure_tags %}{% tier_badge 0 label %}", label="x<y") == (
        '<span class="tier tier-0" title="team tier">x&lt;y</span>'
    )

"""The runs list searches by name and sorts by any column, both ways, keeping the filters;
bad sort keys are ignored, never an error page."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from experiments.models import Run
from tests import factories
from tests.conftest import Lab, login

pytestmark = pytest.mark.django_db


def ids_on_page(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'name="ids" value="(\d+)"', html)]


@pytest.fixture
def runs(lab: Lab) -> list[Run]:
    made = []
    for name, loss in (("baseline h3", 0.9), ("wide attention", 0.2), ("h3 long", None)):
        run = factories.make_run(lab.project, user=lab.alice, name=name)
        Run.objects.filter(pk=run.pk).update(loss=loss)
        made.append(run)
    factories.make_run(lab.other_project, user=lab.bob, name="h3 of another team")
    return made


def test_search_by_name_finds_only_visible_matches(lab: Lab, runs: list[Run]) -> None:
    page = login(lab.alice).get(reverse("runs"), {"q": "H3"}).content.decode()
    assert sorted(ids_on_page(page)) == sorted([runs[0].pk, runs[2].pk])
    assert "another team" not in page


@pytest.mark.parametrize(
    ("sort", "expected"),
    [
        ("loss", [1, 0, 2]),  # missing values last, both ways
        ("-loss", [0, 1, 2]),
        ("name", [0, 2, 1]),
        ("-id", [2, 1, 0]),
    ],
)
def test_every_column_sorts_both_ways(
    lab: Lab, runs: list[Run], sort: str, expected: list[int]
) -> None:
    page = login(lab.alice).get(reverse("runs"), {"sort": sort, "project": "induction"})
    assert ids_on_page(page.content.decode()) == [runs[i].pk for i in expected]


def test_headers_toggle_the_direction_and_keep_filters(lab: Lab, runs: list[Run]) -> None:
    html = login(lab.alice).get(reverse("runs"), {"sort": "loss", "q": "h3"}).content.decode()
    assert 'aria-sort="ascending"' in html
    assert "?sort=-loss&amp;q=h3" in html or "?q=h3&amp;sort=-loss" in html


def test_a_bad_sort_key_is_ignored(lab: Lab, runs: list[Run]) -> None:
    r = login(lab.alice).get(reverse("runs"), {"sort": "password; drop table"})
    assert r.status_code == 200 and len(ids_on_page(r.content.decode())) == 3

"""Property tests: whatever the query string of a list page holds (NUL bytes, numbers past
2**63, floats, unicode, repeated or unknown parameters), the answer is never a 5xx; and a
JSON body nested past the parser's bound is refused with 400 at any depth and on any route.

Derandomized with a fixed number of examples, so a run is reproducible and short.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from api.parsers import MAX_JSON_DEPTH
from tests import factories
from tests.conftest import Lab, login
from tests.test_api import api, error, tiny_config

pytestmark = pytest.mark.django_db

HOSTILE = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PAGES = ["/findings/", "/runs/", "/runs/compare/", "/audit/"]
API_LISTS = ["/api/v1/findings/", "/api/v1/runs/", "/api/v1/projects/", "/api/v1/grants/"]
PARAMS = [
    "page", "page_size", "q", "ids", "project", "status", "tier", "preset", "task",
    "experiment", "actor", "action", "since", "until", "sort", "ordering", "run", "finding",
]  # fmt: skip

# Text a browser can send (no lone surrogates), with NUL bytes and controls well represented.
text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30)
numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.sampled_from(["1e23", "-0", "NaN", "inf", "0x10", "1_000", "٣", "²", "9" * 400]),
    st.floats(allow_nan=True).map(str),
)
values = st.one_of(text, numbers, st.just("\x00"), text.map(lambda t: t + "\x00" + t))
query = st.lists(
    st.tuples(st.one_of(st.sampled_from(PARAMS), text), values), min_size=1, max_size=4
)


def as_query(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    data: dict[str, list[str]] = {}
    for key, value in pairs:
        data.setdefault(key, []).append(value)
    return data


@pytest.fixture
def reader(lab: Lab) -> Client:
    """A release manager in the project with a run and a finding, so every list has rows."""
    rm = factories.make_release_manager("rm")
    project = factories.make_project("hostile", members=[rm])
    run = factories.make_run(project)
    factories.make_finding(project)
    assert run.pk
    return login(rm)


@pytest.mark.parametrize("url", PAGES)
def test_no_query_string_makes_a_list_page_fail(reader: Client, url: str) -> None:
    @HOSTILE
    @given(pairs=query)
    def check(pairs: list[tuple[str, str]]) -> None:
        response = reader.get(url, as_query(pairs))
        assert response.status_code < 500, (pairs, response.status_code)

    check()


@pytest.mark.parametrize("url", API_LISTS)
def test_no_query_string_makes_an_api_list_fail(lab: Lab, url: str) -> None:
    client = api(factories.make_release_manager("rm"))

    @HOSTILE
    @given(pairs=query)
    def check(pairs: list[tuple[str, str]]) -> None:
        cache.clear()  # rate limits
        response = client.get(url, as_query(pairs))
        assert response.status_code < 500, (pairs, response.status_code)

    check()


@pytest.mark.parametrize("url", ["/findings/", "/api/v1/findings/"])
def test_a_nul_byte_anywhere_in_the_query_answers_400(lab: Lab, url: str) -> None:
    client = APIClient()

    @HOSTILE
    @given(before=text, after=text, key=st.booleans())
    def check(before: str, after: str, key: bool) -> None:
        cache.clear()
        hostile = before + "\x00" + after
        data = {hostile: "1"} if key else {"q": hostile}
        assert client.get(url, data).status_code == 400

    check()


def nested(depth: int, leaf: Any, kinds: list[bool]) -> Any:
    value = leaf
    for i in range(depth):
        value = {"k": value} if kinds[i % len(kinds)] else [value]
    return value


@pytest.mark.parametrize("url", ["/api/v1/runs/", "/api/v1/findings/"])
def test_a_body_nested_past_the_bound_answers_400_at_any_depth(lab: Lab, url: str) -> None:
    client = api(lab.alice)

    @settings(HOSTILE, max_examples=20)
    @given(
        depth=st.integers(min_value=MAX_JSON_DEPTH + 1, max_value=20_000),
        kinds=st.lists(st.booleans(), min_size=1, max_size=5),
        leaf=st.one_of(st.integers(), st.text(max_size=5), st.none()),
    )
    def check(depth: int, kinds: list[bool], leaf: Any) -> None:
        cache.clear()
        # Serialized by hand: json.dumps itself recurses once per level.
        opener = "".join('{"k": ' if kinds[i % len(kinds)] else "[" for i in range(depth))
        closer = "".join("}" if kinds[i % len(kinds)] else "]" for i in reversed(range(depth)))
        body = '{"config": ' + opener + json.dumps(leaf) + closer + "}"
        response = client.post(url, body, content_type="application/json")
        assert response.status_code == 400
        assert "nested too deeply" in error(response)["message"]

    check()


def test_a_body_within_the_bound_is_parsed(lab: Lab) -> None:
    config = tiny_config()
    config["train"]["note"] = nested(MAX_JSON_DEPTH - 4, 1, [True, False])
    body = json.dumps({"project": lab.project.slug, "config": config})
    response = api(lab.alice).post("/api/v1/runs/", body, content_type="application/json")
    assert "nested too deeply" not in response.content.decode()

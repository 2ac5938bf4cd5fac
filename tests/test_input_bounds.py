"""Input an attacker controls answers 400 or 404 with a message, never 500.

Each test below started as a reproduction: a NUL byte reaching a PostgreSQL text comparison,
page and id numbers beyond what the database stores, JSON bodies nested thousands deep, seeds
that fail only when the run starts, and text and dates without bounds.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client

from disclosure.forms import GrantForm, ScheduleForm
from experiments.inputs import MAX_BODY_CHARS
from experiments.models import Finding, Project
from tests import factories
from tests.conftest import Lab, login
from tests.test_api import api, error, tiny_config

DEEP = 5000


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


# --- NUL bytes ----------------------------------------------------------------------------------


def test_a_nul_byte_in_the_finding_search_answers_400(lab: Lab, client: Client) -> None:
    response = client.get("/findings/", {"q": "\x00"})
    assert response.status_code == 400
    assert b"NUL" in response.content


def test_a_nul_byte_in_a_query_parameter_name_answers_400(lab: Lab, client: Client) -> None:
    assert client.get("/findings/?a%00b=1").status_code == 400


def test_a_nul_byte_in_an_api_query_answers_400_in_the_api_error_format(lab: Lab) -> None:
    response = api(lab.alice).get("/api/v1/findings/", {"q": "a\x00"})
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert error(response) == {
        "code": "parse_error",
        "message": "Request parameters must not contain NUL bytes.",
        "fields": {},
    }


def test_a_nul_byte_in_form_input_answers_400(lab: Lab) -> None:
    response = login(lab.alice).post("/accounts/login/", {"username": "a\x00", "password": "x"})
    assert response.status_code == 400


def test_a_nul_byte_in_a_json_body_answers_400(lab: Lab) -> None:
    response = api(lab.alice).post(
        "/api/v1/findings/", '{"title": "a\\u0000b"}', content_type="application/json"
    )
    assert response.status_code == 400
    assert "NUL" in error(response)["message"]


# --- numbers beyond range -----------------------------------------------------------------------


@pytest.mark.parametrize("page", ["1e23", str(10**23), "-5", "9" * 400, "x"])
@pytest.mark.parametrize("url", ["/findings/", "/runs/", "/audit/"])
def test_a_page_number_beyond_range_shows_the_last_page(lab: Lab, url: str, page: str) -> None:
    response = login(factories.make_release_manager("rm")).get(url, {"page": page})
    assert response.status_code == 200


@pytest.mark.parametrize("ids", ["1e23", str(10**23), str(2**63), "-1", "0"])
def test_run_ids_beyond_range_are_refused_with_a_message(lab: Lab, ids: str) -> None:
    response = login(lab.alice).get("/runs/compare/", {"ids": ids})
    assert response.status_code in (302, 400, 404)


@pytest.mark.parametrize("pk", [str(10**23), str(2**63)])
def test_an_object_id_beyond_range_answers_404(lab: Lab, pk: str) -> None:
    assert login(lab.alice).get(f"/runs/{pk}/").status_code == 404
    assert login(lab.alice).get(f"/findings/{pk}/").status_code == 404
    assert api(lab.alice).get(f"/api/v1/runs/{pk}/").status_code == 404


@pytest.mark.parametrize("page", ["1e23", str(10**23), "9" * 400])
def test_an_api_page_beyond_range_answers_404(lab: Lab, page: str) -> None:
    response = api(lab.alice).get("/api/v1/runs/", {"page": page})
    assert response.status_code == 404


# --- JSON nesting -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["/api/v1/runs/", "/api/v1/findings/"])
def test_a_json_body_nested_thousands_deep_answers_400(lab: Lab, url: str) -> None:
    body = '{"config": ' + deep_json(DEEP) + "}"
    response = api(lab.alice).post(url, body, content_type="application/json")
    assert response.status_code == 400
    assert "nested too deeply" in error(response)["message"]


def test_strings_that_look_like_brackets_do_not_count_as_nesting(lab: Lab) -> None:
    from api.parsers import nesting_depth

    assert nesting_depth(json.dumps({"a": "[[[[{{{{" * 1000, "b": [[1]]}).encode()) == 3
    assert nesting_depth(b'["\\"[[[", [[]]]') == 3


# --- seeds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [10**30, 2**63, -1])
def test_a_seed_outside_0_to_2_pow_63_is_refused_when_the_run_is_submitted(
    lab: Lab, seed: int
) -> None:
    config: dict[str, Any] = tiny_config()
    config["train"]["seed"] = seed
    response = api(lab.alice).post(
        "/api/v1/runs/",
        json.dumps({"project": lab.project.slug, "config": config}),
        content_type="application/json",
    )
    assert response.status_code == 400, response.content
    assert "seed" in response.content.decode()


def test_a_seed_of_10_pow_30_is_a_form_error_on_the_run_form(lab: Lab) -> None:
    fields = {"experiment": "e", "preset": "h3", "task": "induction_head", "vocab_size": "8"}
    fields |= {"seq_len": "12", "d_model": "16", "n_layer": "1", "steps": "4", "lr": "0.003"}
    fields |= {"batch_size": "8", "seed": str(10**30), "queue": "cpu"}
    response = login(lab.alice).post(f"/projects/{lab.project.slug}/runs/new/", fields)
    assert response.status_code == 200
    assert response.context["form"].errors["seed"]


def test_the_largest_seed_is_accepted() -> None:
    from experiments.runconfig import _limit_errors

    top = 2**63 - 1
    assert (
        _limit_errors({"train": {"seed": top}, "task": {"seed": top}}, n_layer=1, d_model=8) == {}
    )


# --- text sizes and dates -----------------------------------------------------------------------


def test_a_finding_body_over_the_limit_is_refused_by_the_api(lab: Lab) -> None:
    run = factories.make_run(lab.project)
    body = {"title": "t", "body": "x" * (MAX_BODY_CHARS + 1), "runs": [run.pk]}
    response = api(lab.alice).post("/api/v1/findings/", body, format="json")
    assert response.status_code == 400
    assert "body" in error(response)["fields"]


def test_a_finding_body_over_the_limit_is_a_form_error(lab: Lab) -> None:
    run = factories.make_run(lab.project)
    response = login(lab.alice).post(
        f"/runs/{run.pk}/findings/new/", {"title": "t", "body": "x" * (MAX_BODY_CHARS + 1)}
    )
    assert response.status_code == 200
    assert response.context["form"].errors["body"]


def test_a_grant_expiring_beyond_ten_years_is_refused_by_the_api(lab: Lab) -> None:
    rm = factories.make_release_manager("rm")
    body = {"user": lab.bob.username, "project": lab.project.slug}
    response = api(rm).post(
        "/api/v1/grants/", {**body, "expires_at": "9999-12-31T23:59:59Z"}, format="json"
    )
    assert response.status_code == 400
    assert "years" in error(response)["fields"]["expires_at"][0]


@pytest.mark.parametrize("day", ["99999-01-01", "9999-12-31", "2999-01-01"])
def test_a_far_embargo_is_a_form_error(day: str) -> None:
    form = ScheduleForm({"embargo_until": f"{day}T10:00", "tz_offset": "-840"})
    assert form.is_valid() is False
    assert "embargo_until" in form.errors


@pytest.mark.parametrize("day", ["99999-01-01", "9999-12-31", "2999-01-01"])
def test_a_far_grant_expiry_is_a_form_error(lab: Lab, day: str) -> None:
    data = {"user": "bob", "project": lab.project.pk, "max_tier": "2", "expires_on": day}
    form = GrantForm(data, projects=Project.objects.all(), findings=Finding.objects.none())
    assert form.is_valid() is False
    assert "expires_on" in form.errors

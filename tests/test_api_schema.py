"""Schemathesis against the generated OpenAPI schema, in-process over WSGI, as an authenticated
project member: no operation answers 5xx, and every answer (status code, content type, body)
is what the schema says. Bounded: a fixed number of derandomized examples per operation, so it
is reproducible and takes well under a minute."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.cache import cache
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from api import actions as api_actions
from disclosure.models import ReleaseRequest, Vote
from experiments.models import Tier
from experiments.storage import store_file
from h3lab.wsgi import application
from tests import factories
from tests.conftest import Lab

pytestmark = pytest.mark.django_db

EXAMPLES_PER_OPERATION = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def wsgi_in_test_transaction() -> Iterator[None]:
    """Requests go straight to the WSGI app (not Django's test client), so stop it closing the
    test's database connection at the end of each request, as the test client does."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


def _world(lab: Lab, tmp_path: Path) -> dict[str, list[Any]]:
    """Objects for generated ids to hit (besides the random ones that miss), by the resource
    the path names: ``/api/v1/<resource>/{id}/…``, and ``slug`` for projects. Keyed by
    resource so that an aimed id is the right kind of object whatever the primary keys are
    (on PostgreSQL they depend on what earlier tests inserted)."""
    run = factories.make_run(lab.project, user=lab.alice)
    factories.add_metrics(run, "train_loss", [2.0, 1.0, 0.5])
    src = tmp_path / "train.log"
    src.write_text("step 0\nstep 10\n")
    artifact = store_file(run, src, "train.log")
    artifact.save()
    finding = factories.make_finding(lab.project, tier=Tier.TEAM)
    finding.runs.add(run)
    public = factories.make_finding(lab.project, tier=Tier.PUBLIC)
    # a finding under review with an open objection, for the review flow's operations
    reviewed = factories.make_finding(lab.project, tier=Tier.REVIEW)
    request = ReleaseRequest.objects.create(
        finding=reviewed, from_tier=Tier.REVIEW, target_tier=Tier.PARTNERS
    )
    objection = Vote.objects.create(
        request=request,
        finding=reviewed,
        reviewer=factories.make_reviewer("ola"),
        kind="object",
        rationale="too early",
    )
    return {
        "runs": [run.pk],
        "artifacts": [artifact.pk],
        "findings": [finding.pk, public.pk, reviewed.pk],
        "objections": [objection.pk],
        "experiments": [run.experiment_id],
        "projects": [lab.project.slug],
    }


def _resource(path: str) -> str:
    """``runs`` for ``/api/v1/runs/{id}/cancel/``; ``""`` for ``/api/v1/``."""
    parts = path.strip("/").split("/")
    return parts[2] if len(parts) > 2 else ""


def _fuzz(
    operation: Any, targets: list[Any], headers: dict[str, str], statuses: Counter[int]
) -> None:
    """Call one operation with generated cases; raise on the first nonconforming answer."""

    @given(case=operation.as_strategy(), pick=st.data())
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any, pick: Any) -> None:
        for name in case.path_parameters or {}:
            # Half the time aim at an object that exists (and that alice may see).
            if targets and pick.draw(st.booleans()):
                case.path_parameters[name] = pick.draw(st.sampled_from(targets))
        with transaction.atomic():  # each call leaves the world as it found it
            response = case.call(headers=headers)
            transaction.set_rollback(True)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)

    check()


@pytest.mark.slow
def test_the_api_conforms_to_its_schema_under_fuzzing(
    lab: Lab, settings: Any, tmp_path: Path, wsgi_in_test_transaction: None
) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": None}
    cache.clear()
    known = _world(lab, tmp_path)
    secret = api_actions.do_create_token(
        user=lab.alice, name="fuzz", scope="manage", days=1, acting_user=lab.alice
    ).plaintext
    headers = {"Authorization": f"Bearer {secret}"}
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the schema does not load: {result}"
        operation = result.ok()

        try:
            _fuzz(operation, known.get(_resource(operation.path), []), headers, statuses)
        except Exception as exc:  # collect every operation's failure, not just the first
            failures.append(f"{operation.label}: {type(exc).__name__}: {exc}"[:2000])

    assert not failures, "\n\n".join(failures)
    assert statuses[200] and statuses[201], f"the fuzz never succeeded: {dict(statuses)}"
    assert not [s for s in statuses if s >= 500], json.dumps(statuses)


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [
        (path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items()
    ]


def test_operations_are_tagged_by_the_resource_they_act_on() -> None:
    for path, method, op in _operations():
        parts = path.strip("/").split("/")
        expected = parts[2] if len(parts) > 2 and parts[2] != "me" else "api"
        assert op["tags"] == [expected], f"{method.upper()} {path}: {op['tags']}"
    tags = {op["tags"][0] for _, _, op in _operations()}
    assert {"findings", "objections", "grants", "projects", "runs", "exports"} <= tags


def test_every_json_request_body_has_an_example() -> None:
    """What a client sends is shown, not only described (the docs' "Try it out" starts
    from it)."""
    missing = [
        f"{method.upper()} {path}"
        for path, method, op in _operations()
        if "application/json" in op.get("requestBody", {}).get("content", {})
        and not op["requestBody"]["content"]["application/json"].get("examples")
    ]
    assert not missing, f"request bodies without an example: {missing}"


def test_the_schema_generates_without_warnings(tmp_path: Path) -> None:
    """drf-spectacular's warnings (an enum name collision, an unresolvable serializer) are
    failures of `check --deploy --fail-level WARNING` in CI: catch them here first."""
    from django.core.management import call_command

    out = tmp_path / "schema.yml"
    try:
        call_command("spectacular", "--file", str(out), "--fail-on-warn", "--validate")
    except (SystemExit, Exception) as exc:  # the command exits on a warning
        raise AssertionError(f"the OpenAPI schema has warnings: {exc!r}") from exc
    assert out.stat().st_size > 0

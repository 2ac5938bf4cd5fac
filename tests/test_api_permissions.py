"""Every API endpoint and method × every persona of the permission matrix × every tier, with
token authentication and real request bodies.

The session-authenticated pass over the same URL names is part of test_permission_matrix.py;
here each allowed call must *succeed* (2xx), and each refusal must be the policy's 404 (401
for anonymous callers of endpoints that need an account) — never a 403, which would tell a
prober the object exists.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from api import actions as api_actions
from disclosure.models import ReleaseRequest, Vote
from experiments.models import Tier
from tests import factories
from tests.conftest import Cast
from tests.test_permission_matrix import (
    PERSONAS,
    REGISTRY,
    World,
    build_world,
    is_api,
    member_only,
    project_kw,
    release_manager,
    reviewing,
    url_names,
)

pytestmark = pytest.mark.django_db


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    kwargs: Callable[[World], dict[str, Any]]
    allowed: Callable[[str, int], bool]
    body: Callable[[World], Any] = lambda w: {}
    # what a refusal may look like besides 404 (e.g. 400 "object does not exist" for an id
    # in a body, which is also what a missing id gets)
    denied_also: tuple[int, ...] = ()
    # what an allowed call may answer besides 2xx (a refusal on content, past access control)
    allowed_also: tuple[int, ...] = ()
    multipart: bool = False  # the body is a form with files, not JSON


def _submit(w: World) -> dict[str, Any]:
    config = factories.tiny_config().to_dict()
    return {"project": w.cast.lab.project.slug, "config": config}


def _finding(w: World) -> dict[str, Any]:
    return {"title": "From the API", "body": "text", "runs": [w.run.pk]}


def _assessment(w: World) -> dict[str, Any]:
    return {"capability_uplift": 0, "alignment_value": 2, "rationale": "explains a mechanism"}


def _grant(w: World) -> dict[str, Any]:
    expires = (timezone.now() + timedelta(days=5)).isoformat()
    return {"user": "charlie", "project": w.cast.lab.project.slug, "expires_at": expires}


def _finding_kw(w: World) -> dict[str, Any]:
    return {"pk": w.finding.pk}


def _pending_request(w: World) -> ReleaseRequest:
    """A pending request for the world's finding (the matrix removes the world's own so that
    the request steps can succeed; each call is rolled back, this with it)."""
    return ReleaseRequest.objects.create(
        finding=w.finding, from_tier=w.tier, target_tier=min(w.tier + 1, Tier.PUBLIC)
    )


def _objection_kw(w: World) -> dict[str, Any]:
    """A fresh open objection of ola's (a reviewer who is none of the personas)."""
    request = _pending_request(w)
    ola = User.objects.get(username="ola")
    vote = Vote.objects.create(
        request=request, finding=w.finding, reviewer=ola, kind="object", rationale="too early"
    )
    return {"pk": vote.pk}


def _vote(w: World) -> dict[str, Any]:
    _pending_request(w)
    return {"kind": "object", "rationale": "the probe code reveals the trick"}


def _schedule(w: World) -> dict[str, Any]:
    _pending_request(w)
    return {"embargo_until": (timezone.now() + timedelta(days=60)).isoformat()}


def _analysis(w: World) -> dict[str, Any]:
    """The world's run gets a stored checkpoint (stand-in bytes: submitting only checks that
    it is there), so that an allowed call can queue an evaluation of it."""
    from experiments.storage import store_file

    src = Path(tempfile.mkdtemp()) / "ckpt"
    src.write_bytes(b"weights")
    for name in ("model.safetensors", "config.json"):
        store_file(w.run, src, name).save()
    return {"kind": "evaluate"}


# Bodies for the matrix's POST entries, so that an allowed call can succeed.
BODIES: dict[str, Callable[[World], Any]] = {
    "api-run-analyses": _analysis,
    "api-finding-recuse": lambda w: {"reason": "I co-authored the probe"},
    "api-finding-schedule": _schedule,
    "api-finding-retract": lambda w: {"reason": "a data leak", "confirm": True},
    "api-objection-clear": lambda w: {"rationale": "addressed in revision 2"},
    "api-grant-approve": lambda w: {"decision": "approve", "note": "checked"},
}
KWARGS: dict[str, Callable[[World], dict[str, Any]]] = {
    "api-objection-detail": _objection_kw,
    "api-objection-withdraw": _objection_kw,
    "api-objection-clear": _objection_kw,
}


def registered_cases() -> list[Case]:
    """The permission matrix's API entries, with its methods and rules."""
    return [
        Case(
            name,
            entry.method,
            KWARGS.get(name, entry.kwargs),
            entry.allowed,
            BODIES.get(name, lambda w: {}),
        )
        for name, entry in REGISTRY.items()
        if is_api(name)
    ]


def _corpus(w: World) -> dict[str, Any]:
    return {"file": SimpleUploadedFile("notes.txt", b"the cat sat on the mat\n")}


EXTRA_METHODS = [
    Case("api-run-list", "post", lambda w: {}, member_only, _submit),
    Case("api-finding-list", "post", lambda w: {}, member_only, _finding, denied_also=(400,)),
    Case(
        "api-finding-detail",
        "patch",
        _finding_kw,
        lambda p, t: p == "member",
        lambda w: {"title": "Edited"},
    ),
    Case("api-finding-assessments", "post", _finding_kw, reviewing, _assessment),
    Case("api-finding-votes", "post", _finding_kw, reviewing, _vote),
    # a revision is proposed for a finding above the team tier; at the team tier the edit is
    # made in place (PATCH) and the proposal is refused on content (400)
    Case(
        "api-finding-revisions",
        "post",
        _finding_kw,
        member_only,
        lambda w: {"title": "Revised", "body": "new text", "note": "clearer"},
        allowed_also=(400,),
    ),
    Case("api-project-corpora", "post", project_kw, member_only, _corpus, multipart=True),
    Case("api-grant-list", "post", lambda w: {}, release_manager, _grant),
    Case(
        "api-project-list",
        "post",
        lambda w: {},
        lambda p, t: False,  # lab admins only: tests/test_lab_admin.py
        lambda w: {"slug": "from-the-api", "name": "From the API"},
    ),
    # a publication bundle of the world's finding: only the release manager may ask, and even
    # then it is refused on content (400 listing its blockers: no recorded release decision)
    Case(
        "api-export-list",
        "post",
        lambda w: {},
        release_manager,
        lambda w: {"kind": "public", "findings": [w.finding.pk]},
        allowed_also=(400,),
    ),
]


def test_every_api_url_name_is_covered() -> None:
    covered = {c.name for c in registered_cases() + EXTRA_METHODS}
    assert {n for n in url_names() if is_api(n)} <= covered


def call(client: APIClient, case: Case, world: World) -> Any:
    with transaction.atomic():  # the objects kwargs and bodies make are rolled back too
        url = reverse(case.name, kwargs=case.kwargs(world))
        if case.multipart:
            response = client.post(url, case.body(world), format="multipart")
        else:
            body = json.dumps(case.body(world)) if case.method != "get" else None
            response = client.generic(case.method.upper(), url, body or "", "application/json")
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)
        transaction.set_rollback(True)
    return response


def token_client(user: Any) -> APIClient:
    client = APIClient()
    if user is not None:
        made = api_actions.do_create_token(
            user=user, name="matrix", scope="manage", days=1, acting_user=user
        )
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {made.plaintext}")
    return client


@pytest.fixture(autouse=True)
def _no_rate_limit(settings: Any) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": None}
    cache.clear()


@pytest.mark.parametrize("tier", list(Tier), ids=[t.label for t in Tier])
def test_api_permission_matrix(cast: Cast, tier: int, tmp_path: Path) -> None:
    world = build_world(cast, tier, tmp_path)
    # Without a pending request the review/release steps can succeed when allowed.
    ReleaseRequest.objects.filter(finding=world.finding).delete()
    clients = {p: token_client(world.users[p]) for p in PERSONAS}
    failures: list[str] = []
    for case in registered_cases() + EXTRA_METHODS:
        for persona in PERSONAS:
            response = call(clients[persona], case, world)
            code = response.status_code
            allowed = case.allowed(persona, tier)
            if allowed:
                ok = 200 <= code < 300 or code in case.allowed_also
            else:
                ok = (
                    code == 404
                    or code in case.denied_also
                    or (persona == "anonymous" and code == 401)
                )
            if not ok:
                streamed = getattr(response, "streaming", False)
                detail = b"" if streamed else response.content[:200]
                failures.append(
                    f"{case.method.upper()} {case.name} as {persona}: "
                    f"{'allowed' if allowed else 'denied'} expected, got {code} {detail!r}"
                )
    assert not failures, "\n".join(failures)

"""The permission matrix: every URL of the site × every persona × every tier.

``REGISTRY`` maps each URL name to how to call it for a world whose finding is at a given tier
and who may use it. The URL names are enumerated from the resolver, so a new view that is not
in the registry fails ``test_every_url_is_in_the_registry`` until someone states who may use
it — and the matrix then checks the view enforces exactly that. Admin URLs are excluded by
prefix (the admin's querysets come from the policy, see web/admin.py and
disclosure/admin.py).

Allowed: any status below 400 that is not a redirect to the login page. Denied: 404, or a
redirect to the login page for anonymous visitors. Nothing else (403, 405, 500) is accepted.

API URLs (names ``api-…``) answer anonymous visitors 401 instead of a login redirect, and an
allowed API request may be refused on its *content* (400 for a body this generic call does not
fill in, e.g. a finding that already has a pending request): anything below 500 except
401/403/404/405 proves the request got past access control. tests/test_api_permissions.py
checks every API method with real bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import transaction
from django.http import HttpResponseBase
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from disclosure.models import Grant, Recusal, ReleaseRequest, Vote
from experiments.models import Artifact, Finding, Run, Tier
from experiments.storage import store_file
from tests import factories
from tests.conftest import Cast, login

pytestmark = pytest.mark.django_db

EXCLUDED_PREFIXES = ("admin/",)

PERSONAS = [
    "anonymous",
    "outsider",
    "other_member",
    "member",
    "reviewer",
    "recused_reviewer",
    "collaborator",
    "expired_grant",
    "unaccepted_agreement",
    "release_manager",
]
AUTHENTICATED = set(PERSONAS) - {"anonymous"}


def sees(persona: str, tier: int) -> bool:
    """The tier table (design.md), for the world's finding (the recused reviewer recused)."""
    if persona == "member":
        return True
    if persona in ("reviewer", "release_manager"):
        return tier >= Tier.REVIEW
    if persona == "collaborator":
        return tier >= Tier.PARTNERS
    return tier == Tier.PUBLIC


@dataclass
class World:
    cast: Cast
    tier: int
    finding: Finding
    run: Run
    artifact: Artifact
    objection: Vote
    grant: Grant
    pending_grant: Grant
    users: dict[str, Any] = field(default_factory=dict)
    export_id: int = 0
    signing_key_id: str = ""


Rule = Callable[[str, int], bool]


@dataclass(frozen=True)
class Entry:
    kwargs: Callable[[World], dict[str, Any]] = lambda w: {}
    allowed: Rule = lambda p, t: True
    method: str = "get"
    query: Callable[[World], dict[str, Any]] = lambda w: {}
    fresh_client: bool = False  # the request ends the session (logout)


def finding_kw(w: World) -> dict[str, Any]:
    return {"pk": w.finding.pk}


def run_kw(w: World) -> dict[str, Any]:
    return {"pk": w.run.pk}


def project_kw(w: World) -> dict[str, Any]:
    return {"slug": w.cast.lab.project.slug}


def member_only(p: str, t: int) -> bool:
    return p == "member"


def signed_in(p: str, t: int) -> bool:
    return p in AUTHENTICATED


def release_manager(p: str, t: int) -> bool:
    return p == "release_manager"


def lab_admin_only(p: str, t: int) -> bool:
    """Lab administration: superusers and (for a team) the project's delegates; none of the
    personas is either (tests/test_lab_admin.py checks those who are)."""
    return False


def publication_kw(w: World) -> dict[str, Any]:
    from disclosure.models import Export

    return {"pk": w.export_id, "name": Export.objects.get(pk=w.export_id).name}


def member_kw(w: World) -> dict[str, Any]:
    return {"slug": w.cast.lab.project.slug, "username": w.users["member"].username}


def reviewing(p: str, t: int) -> bool:
    return p == "reviewer" and t >= Tier.REVIEW


def sees_review(p: str, t: int) -> bool:
    """Assessments and release requests: the team, and reviewers / release managers who can
    see the finding (policy.can_see_review)."""
    return p == "member" or (p in ("reviewer", "release_manager") and t >= Tier.REVIEW)


def member_token(w: World) -> int:
    from api import actions as api_actions

    alice = w.cast.lab.alice
    made = api_actions.do_create_token(
        user=alice, name="matrix", scope="read", days=1, acting_user=alice
    )
    return made.token.pk


REGISTRY: dict[str, Entry] = {
    # site
    "login": Entry(),
    "logout": Entry(method="post", fresh_client=True),
    # accounts: password change needs a session; reset is for anyone (a bad link answers 200)
    "password_change": Entry(allowed=signed_in),
    "password_change_done": Entry(allowed=signed_in),
    "password_reset": Entry(),
    "password_reset_done": Entry(),
    "password_reset_confirm": Entry(lambda w: {"uidb64": "MQ", "token": "no-such-token"}),
    "password_reset_complete": Entry(),
    # second factor: the helper's personas are verified already (redirected onwards)
    "mfa-enrol": Entry(allowed=signed_in),
    "mfa-verify": Entry(allowed=signed_in),
    "mfa-recovery-codes": Entry(allowed=signed_in),
    # experiments (team working material)
    "home": Entry(),
    "project": Entry(project_kw, member_only),
    "project-team": Entry(project_kw, lab_admin_only),
    "lab": Entry(allowed=lab_admin_only),
    "run-new": Entry(project_kw, member_only),
    "runs": Entry(allowed=signed_in),
    "runs-compare": Entry(allowed=member_only, query=lambda w: {"ids": str(w.run.pk)}),
    "runs-compare-series": Entry(
        allowed=member_only, query=lambda w: {"ids": str(w.run.pk), "name": "train_loss"}
    ),
    "run": Entry(run_kw, member_only),
    "run-progress": Entry(run_kw, member_only),
    "run-series": Entry(run_kw, member_only),
    "run-log": Entry(run_kw, member_only),
    "run-cancel": Entry(run_kw, member_only, method="post"),
    "run-rerun": Entry(run_kw, member_only),
    "run-analyse": Entry(run_kw, member_only, method="post"),
    "finding-new": Entry(run_kw, member_only),
    # evidence cited by the world's finding follows the finding's visibility
    "artifact-download": Entry(lambda w: {"pk": w.artifact.pk}, sees),
    # disclosure
    "findings": Entry(),
    "finding": Entry(finding_kw, sees),
    "finding-audience": Entry(
        finding_kw, lambda p, t: p == "member" or (p == "release_manager" and t >= Tier.REVIEW)
    ),
    "finding-request-review": Entry(
        finding_kw, lambda p, t: p == "member" and t == Tier.TEAM, method="post"
    ),
    "finding-request-release": Entry(
        finding_kw,
        lambda p, t: t in (Tier.REVIEW, Tier.PARTNERS) and p in ("member", "release_manager"),
        method="post",
    ),
    "finding-edit": Entry(finding_kw, member_only),
    "finding-revision-withdraw": Entry(finding_kw, member_only, method="post"),
    "finding-assess": Entry(finding_kw, reviewing),
    "finding-vote": Entry(finding_kw, reviewing, method="post"),
    "finding-recuse": Entry(finding_kw, reviewing, method="post"),
    "finding-schedule": Entry(
        finding_kw, lambda p, t: p == "release_manager" and t >= Tier.REVIEW, method="post"
    ),
    "finding-retract": Entry(
        finding_kw,
        lambda p, t: p == "member" or (p == "release_manager" and t >= Tier.REVIEW),
        method="post",
    ),
    # the objection is ola's: only ola withdraws it; board members who may review the finding
    # vote to clear it (a release manager alone cannot)
    "objection-withdraw": Entry(
        lambda w: {"pk": w.objection.pk}, lambda p, t: False, method="post"
    ),
    "objection-clear": Entry(lambda w: {"pk": w.objection.pk}, reviewing, method="post"),
    "review-queue": Entry(
        allowed=lambda p, t: p in ("reviewer", "recused_reviewer", "release_manager")
    ),
    "grants": Entry(allowed=release_manager),
    "grant-revoke": Entry(lambda w: {"pk": w.grant.pk}, release_manager, method="post"),
    # a grant given by a delegated manager, awaiting a release manager's approval
    "grant-approve": Entry(lambda w: {"pk": w.pending_grant.pk}, release_manager, method="post"),
    "my-access": Entry(allowed=signed_in),
    "agreement-accept": Entry(allowed=signed_in, method="post"),
    "inbox": Entry(allowed=signed_in),
    "audit": Entry(allowed=release_manager),
    "audit-export": Entry(allowed=release_manager),
    # API (/api/v1/): the same rules as the pages they mirror
    "api-root": Entry(),
    "api-me": Entry(allowed=signed_in),
    "api-project-list": Entry(allowed=signed_in),
    "api-project-detail": Entry(project_kw, member_only),
    "api-project-team": Entry(project_kw, lab_admin_only),
    "api-project-member": Entry(member_kw, lab_admin_only, method="delete"),
    "api-project-delegates": Entry(project_kw, lab_admin_only, method="post"),
    "api-project-delegate": Entry(member_kw, lab_admin_only, method="delete"),
    "api-experiment-list": Entry(allowed=signed_in),
    "api-experiment-detail": Entry(lambda w: {"pk": w.run.experiment_id}, member_only),
    "api-run-list": Entry(allowed=signed_in),
    "api-run-detail": Entry(run_kw, member_only),
    "api-run-metrics": Entry(run_kw, member_only),
    "api-run-logs": Entry(run_kw, member_only),
    "api-run-cancel": Entry(run_kw, member_only, method="post"),
    "api-run-rerun": Entry(run_kw, member_only, method="post"),
    "api-run-analyses": Entry(run_kw, member_only, method="post"),
    "api-artifact-list": Entry(),
    "api-artifact-detail": Entry(lambda w: {"pk": w.artifact.pk}, sees),
    "api-artifact-download": Entry(lambda w: {"pk": w.artifact.pk}, sees),
    "api-finding-list": Entry(),
    "api-finding-detail": Entry(finding_kw, sees),
    "api-finding-request-review": Entry(
        finding_kw, lambda p, t: p == "member" and t == Tier.TEAM, method="post"
    ),
    "api-finding-request-release": Entry(
        finding_kw,
        lambda p, t: t in (Tier.REVIEW, Tier.PARTNERS) and p in ("member", "release_manager"),
        method="post",
    ),
    "api-finding-assessments": Entry(finding_kw, sees_review),
    "api-finding-revisions": Entry(finding_kw, sees),
    "api-finding-release-requests": Entry(finding_kw, sees_review),
    "api-grant-list": Entry(allowed=release_manager),
    "api-grant-detail": Entry(lambda w: {"pk": w.grant.pk}, release_manager),
    "api-grant-revoke": Entry(lambda w: {"pk": w.grant.pk}, release_manager, method="post"),
    "api-export-list": Entry(allowed=release_manager),
    "api-export-detail": Entry(lambda w: {"pk": w.export_id}, release_manager),
    "api-export-download": Entry(lambda w: {"pk": w.export_id}, release_manager),
    "api-schema": Entry(),
    "api-docs": Entry(),
    "api-redoc": Entry(),
    "tokens": Entry(allowed=signed_in),
    # a token of the member's: only its owner may revoke it
    "token-revoke": Entry(lambda w: {"pk": member_token(w)}, member_only, method="post"),
    # publication (issue 5): the signing keys are public; exports belong to release managers
    # (the world's export was requested by mara; partner copies: test_publication_partner.py)
    "keys": Entry(),
    # released bundles: anyone, once every finding in them is public (the world's export holds
    # the world's finding)
    "publications": Entry(),
    "publication-download": Entry(publication_kw, lambda p, t: t == Tier.PUBLIC),
    "key-pem": Entry(lambda w: {"key_id": w.signing_key_id}),
    "keys-json": Entry(),
    "exports": Entry(allowed=release_manager),
    "export-public": Entry(allowed=release_manager, method="post"),
    "export-partner": Entry(allowed=release_manager, method="post"),
    "export": Entry(lambda w: {"pk": w.export_id}, release_manager),
    "export-progress": Entry(lambda w: {"pk": w.export_id}, release_manager),
    "export-download": Entry(lambda w: {"pk": w.export_id}, release_manager),
    # the review flow in the API (issue 16): the same rules as the pages they mirror
    "api-finding-votes": Entry(finding_kw, sees_review),
    "api-finding-recuse": Entry(finding_kw, reviewing, method="post"),
    "api-finding-schedule": Entry(
        finding_kw, lambda p, t: p == "release_manager" and t >= Tier.REVIEW, method="post"
    ),
    "api-finding-retract": Entry(
        finding_kw,
        lambda p, t: p == "member" or (p == "release_manager" and t >= Tier.REVIEW),
        method="post",
    ),
    "api-finding-withdraw-revision": Entry(finding_kw, member_only, method="post"),
    "api-objection-detail": Entry(lambda w: {"pk": w.objection.pk}, sees_review),
    "api-objection-withdraw": Entry(
        lambda w: {"pk": w.objection.pk}, lambda p, t: False, method="post"
    ),
    "api-objection-clear": Entry(lambda w: {"pk": w.objection.pk}, reviewing, method="post"),
    "api-grant-approve": Entry(
        lambda w: {"pk": w.pending_grant.pk}, release_manager, method="post"
    ),
    "api-project-corpora": Entry(project_kw, member_only),
}


def url_names() -> set[str]:
    """Every named URL of the site outside the excluded prefixes."""
    names: set[str] = set()

    def walk(patterns: list[Any], prefix: str, namespaced: bool) -> None:
        for p in patterns:
            route = prefix + str(p.pattern)
            if route.startswith(EXCLUDED_PREFIXES):
                continue
            if isinstance(p, URLResolver):
                walk(p.url_patterns, route, namespaced or bool(p.namespace))
            elif isinstance(p, URLPattern):
                assert p.name, f"URL {route!r} has no name: name it and add it to REGISTRY"
                names.add(p.name)

    walk(get_resolver().url_patterns, "", False)
    return names


def test_every_url_is_in_the_registry() -> None:
    names = url_names()
    missing = sorted(names - REGISTRY.keys())
    assert not missing, f"URL names without a permission-matrix entry: {missing}"
    assert not sorted(REGISTRY.keys() - names), "stale REGISTRY entries"


def build_world(cast: Cast, tier: int, tmp_path: Path) -> World:
    lab = cast.lab
    run = factories.make_run(lab.project, user=lab.alice)
    src = tmp_path / "probe.json"
    src.write_text('{"accuracy": 0.97}')
    artifact = store_file(run, src, "probe.json")
    artifact.save()
    finding = factories.make_finding(lab.project, tier=tier, title="The finding under test")
    finding.runs.add(run)
    finding.artifacts.add(artifact)
    Recusal.objects.create(finding=finding, reviewer=cast.rex, reason="co-author")
    request = ReleaseRequest.objects.create(
        finding=finding, from_tier=tier, target_tier=min(tier + 1, Tier.PUBLIC)
    )
    ola = factories.make_reviewer("ola")
    objection = Vote.objects.create(
        request=request, finding=finding, reviewer=ola, kind="object", rationale="too early"
    )
    users = {
        "anonymous": None,
        "outsider": lab.charlie,
        "other_member": lab.bob,
        "member": lab.alice,
        "reviewer": cast.rita,
        "recused_reviewer": cast.rex,
        "collaborator": cast.carol,
        "expired_grant": cast.erin,
        "unaccepted_agreement": cast.nick,
        "release_manager": cast.mara,
    }
    export = ready_export(cast, finding)
    return World(
        export_id=export.pk,
        signing_key_id=export.signing_key_id,
        cast=cast,
        tier=tier,
        finding=finding,
        run=run,
        artifact=artifact,
        objection=objection,
        grant=Grant.objects.get(user=cast.carol),
        pending_grant=factories.make_grant(
            factories.make_user("dana"), project=lab.project, approval="pending"
        ),
        users=users,
    )


@pytest.fixture(autouse=True)
def _no_api_rate_limit(settings: Any) -> None:
    """The matrix sends hundreds of API requests a minute from one address."""
    settings.H3LAB_API_RATES = {"token": None, "anon": None}


def ready_export(cast: Cast, finding: Finding) -> Any:
    """A finished publication bundle requested by the release manager (its bytes are a stand-in:
    the matrix checks who may fetch it; test_publication.py checks what it contains)."""
    from django.conf import settings

    from disclosure import signing
    from disclosure.actions.exports import do_request_export
    from disclosure.models import Export, ExportKind, ExportStatus

    export = do_request_export(
        kind=ExportKind.PUBLIC,
        findings=[finding],
        project=None,
        recipient=None,
        acting_user=cast.mara,
        enqueue=False,
    )
    root = Path(settings.EXPORTS_DIR)
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{export.pk}.tar.gz").write_bytes(b"bundle")
    Export.objects.filter(pk=export.pk).update(
        status=ExportStatus.SUCCEEDED,
        path=f"{export.pk}.tar.gz",
        size=6,
        signing_key_id=signing.current_key().key_id,
    )
    export.refresh_from_db()
    return export


def client_for(user: User | None) -> Client:
    return login(user) if user is not None else Client()


def is_api(name: str) -> bool:
    return name.startswith("api-")


def is_login_redirect(response: HttpResponseBase) -> bool:
    return response.status_code == 302 and response["Location"].startswith(reverse("login"))


def call(client: Client, entry: Entry, name: str, world: World) -> Any:
    """One request, rolled back afterwards so that allowed POSTs leave the world unchanged."""
    url = reverse(name, kwargs=entry.kwargs(world))
    with transaction.atomic():
        response = getattr(client, entry.method)(url, entry.query(world))
        if hasattr(response, "streaming_content"):
            b"".join(response.streaming_content)
        transaction.set_rollback(True)
    return response


@pytest.mark.slow
@pytest.mark.parametrize("tier", list(Tier), ids=[t.label for t in Tier])
def test_permission_matrix(cast: Cast, tier: int, tmp_path: Path) -> None:
    world = build_world(cast, tier, tmp_path)
    failures: list[str] = []
    clients = {p: client_for(u) for p, u in world.users.items()}
    for name in sorted(url_names()):
        entry = REGISTRY[name]
        for persona in PERSONAS:
            client = client_for(world.users[persona]) if entry.fresh_client else clients[persona]
            response = call(client, entry, name, world)
            allowed = entry.allowed(persona, tier)
            code = response.status_code
            if allowed and is_api(name):
                ok = code < 500 and code not in (401, 403, 404, 405)
            elif allowed:
                ok = code < 400 and not is_login_redirect(response)
            else:
                ok = code == 404 or (
                    persona == "anonymous"
                    and (code == 401 if is_api(name) else is_login_redirect(response))
                )
            if not ok:
                failures.append(
                    f"{name} as {persona}: {'allowed' if allowed else 'denied'} expected, "
                    f"got {response.status_code} {response.get('Location', '')}"
                )
    assert not failures, "\n".join(failures)


def test_list_results_equal_per_object_checks(cast: Cast) -> None:
    """For every persona, the finding list shows exactly the findings whose page opens, and
    both match the tier table."""
    findings = {t: factories.make_finding(cast.lab.project, tier=t) for t in Tier}
    for f in findings.values():
        Recusal.objects.create(finding=f, reviewer=cast.rex, reason="co-author")
    users = {
        "anonymous": None,
        "outsider": cast.lab.charlie,
        "other_member": cast.lab.bob,
        "member": cast.lab.alice,
        "reviewer": cast.rita,
        "recused_reviewer": cast.rex,
        "collaborator": cast.carol,
        "expired_grant": cast.erin,
        "unaccepted_agreement": cast.nick,
        "release_manager": cast.mara,
    }
    for persona, user in users.items():
        client = client_for(user)
        listed = {f.pk for f in client.get(reverse("findings")).context["findings"]}
        opens = {
            f.pk for f in findings.values() if client.get(f.get_absolute_url()).status_code == 200
        }
        expected = {f.pk for t, f in findings.items() if sees(persona, t)}
        assert listed == opens == expected, persona

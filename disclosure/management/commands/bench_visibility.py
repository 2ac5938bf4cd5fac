"""``manage.py bench_visibility``: the finding list's first page and count for each persona,
alternated with django-guardian's ``get_objects_for_user`` on the same data.

Runs against *scratch* databases only: a temporary SQLite file and a PostgreSQL database named
``h3lab_bench`` (or ``--scratch-db h3lab_bench_<suffix>``) on the server of ``DATABASE_URL`` (or
127.0.0.1:5432), dropped and recreated, and dropped again afterwards. Each (backend, size) runs
in a child process whose only database is the scratch one, so the user's data can never be
touched.

The anchor: guardian with *direct foreign-key* object permission tables (guardian's fast
layout: ``content_object`` is a real foreign key to the finding, no generic ``object_pk``
text column), created in the scratch database only, holding one ``view_finding`` row per
finding each persona can see under h3lab's policy — so both answer with the same set, which
is checked. Per persona, the two contenders run one request each, alternately, with a fresh
user object per request (nothing cached from the previous one); then h3lab alone, back to
back, as many times, which shows what alternating costs by itself. Prints a table and writes
JSON.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from experiments.users import Viewer

SCRATCH_PG = "h3lab_bench"
PAGE = 50
COUNT_CAP = 1000  # the finding list's count stops here (disclosure.pagination)
REPS = 40
WARMUP = 5
GOAL_P95_MS = 10.0
PERSONAS = [
    "anonymous",
    "outsider",
    "member",
    "reviewer",
    "recused_reviewer",
    "collaborator",
    "expired_grant",
    "unaccepted_agreement",
    "release_manager",
    "lab_admin",
]


def _pg_server_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        return url.rsplit("/", 1)[0]
    return "postgres://postgres@127.0.0.1:5432"


class Command(BaseCommand):
    help = "Benchmark the visible-findings list and count per persona (scratch databases only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--findings", default="10000,50000")
        parser.add_argument("--backends", default="sqlite,postgresql")
        parser.add_argument("--out", default="out/bench_visibility.json")
        parser.add_argument("--reps", type=int, default=REPS, help="timed requests per contender")
        parser.add_argument(
            "--scratch-db",
            default=SCRATCH_PG,
            help="PostgreSQL scratch database (h3lab_bench[_suffix]), dropped and recreated, "
            "dropped afterwards",
        )
        parser.add_argument(
            "--worker", nargs=4, metavar=("BACKEND", "N", "REPS", "JSON"), help=argparse_hidden()
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["worker"]:
            backend, n, reps, out = opts["worker"]
            Path(out).write_text(json.dumps(_work(backend, int(n), int(reps))))
            return
        if not _SCRATCH_NAME.fullmatch(opts["scratch_db"]):
            raise CommandError("--scratch-db must be h3lab_bench or h3lab_bench_<suffix>")
        sizes = [int(s) for s in opts["findings"].split(",")]
        results: list[dict[str, Any]] = []
        for backend in opts["backends"].split(","):
            for n in sizes:
                self.stderr.write(f"{backend}, {n} findings …")
                results.append(self._spawn(backend, n, opts["reps"], opts["scratch_db"]))
        report = {
            "machine": f"{os.cpu_count()}-core {platform.machine()}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}",
            "page_size": PAGE,
            "count_cap": COUNT_CAP,
            "repetitions": opts["reps"],
            "goal_p95_ms": GOAL_P95_MS,
            "results": results,
        }
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        self.stdout.write(render_table(report))
        self.stdout.write(f"\nwrote {out}")

    def _spawn(self, backend: str, n: int, reps: int, scratch: str) -> dict[str, Any]:
        env = dict(os.environ)
        with tempfile.TemporaryDirectory(prefix="h3lab-bench-") as tmp:
            if backend == "sqlite":
                env["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
            elif backend == "postgresql":
                server = _pg_server_url()
                _recreate_pg(server, scratch)
                env["DATABASE_URL"] = f"{server}/{scratch}"
            else:
                raise CommandError(f"unknown backend {backend}")
            env["H3LAB_VAR_DIR"] = tmp
            env["DEBUG"] = "0"
            env.setdefault("SECRET_KEY", "bench-only-" + "x" * 40)
            # DEBUG=0 requires a master key (system check h3lab.E010); nothing is encrypted here.
            key = base64.b64encode(os.urandom(32)).decode()
            env.setdefault("H3LAB_MASTER_KEYS", f"bench:{key}")
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "bench_visibility"]
            worker = ["--worker", backend, str(n), str(reps), str(out)]
            try:
                subprocess.run([*cmd, *worker], env=env, check=True)
            finally:
                if backend == "postgresql":  # leave nothing behind on the server
                    _recreate_pg(_pg_server_url(), scratch, create=False)
            result: dict[str, Any] = json.loads(out.read_text())
            return result


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


_SCRATCH_NAME = re.compile(r"h3lab_bench(_[a-z0-9]+)?")


def _recreate_pg(server: str, scratch: str, *, create: bool = True) -> None:
    """Drop the scratch database and (unless ``create`` is false) create it empty."""
    import psycopg

    if not _SCRATCH_NAME.fullmatch(scratch):  # SECURITY: only ever drop a scratch database
        raise CommandError(f"refusing to drop non-scratch database {scratch!r}")
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {scratch}")
        if create:
            conn.execute(f"CREATE DATABASE {scratch}")


# --- the child: populate the scratch database and measure ---------------------------------------


def _assert_scratch() -> None:
    db = settings.DATABASES["default"]
    name = str(db["NAME"])
    scratch = (db["ENGINE"].endswith("sqlite3") and "h3lab-bench-" in name) or bool(
        _SCRATCH_NAME.fullmatch(name)
    )
    if not scratch:  # SECURITY: never populate or time against real data
        raise CommandError(f"refusing to benchmark against non-scratch database {name!r}")


def _populate(n: int, rng: random.Random) -> dict[str, Any]:
    from django.contrib.auth.models import Group, User
    from django.utils import timezone

    from disclosure.models import (
        AgreementAcceptance,
        AgreementVersion,
        Grant,
        Recusal,
    )
    from experiments.models import Finding, FindingStatus, Project, Tier

    now = timezone.now()
    users = User.objects.bulk_create(
        # "!" is Django's unusable-password marker: no one can sign in as these bench users.
        User(username=f"u{i:03d}", email=f"u{i:03d}@bench.test", password="!")  # noqa: S106
        for i in range(200)
    )
    users = list(User.objects.order_by("pk"))
    projects = []
    for i in range(30):
        g = Group.objects.create(name=f"project:p{i:02d}")
        projects.append(Project.objects.create(slug=f"p{i:02d}", name=f"P{i:02d}", group=g))
    # 30 project groups + review board + release managers (from the migration) + 8 partner orgs
    partner_groups = [Group.objects.create(name=f"partner-{i}") for i in range(8)]
    board = Group.objects.get(name=settings.H3LAB_REVIEW_BOARD_GROUP)
    managers = Group.objects.get(name=settings.H3LAB_RELEASE_MANAGERS_GROUP)
    for i, u in enumerate(users[:150]):  # researchers: 1–2 projects each
        projects[i % 30].group.user_set.add(u)
        if i % 3 == 0:
            projects[(i * 7 + 3) % 30].group.user_set.add(u)
    board.user_set.add(*users[150:165])
    managers.user_set.add(*users[165:170])
    for i, u in enumerate(users[173:200]):  # the three grant personas stay out of partner orgs
        partner_groups[i % 8].user_set.add(u)

    tiers = [Tier.TEAM] * 40 + [Tier.REVIEW] * 25 + [Tier.PARTNERS] * 15 + [Tier.PUBLIC] * 20
    batch = []
    for i in range(n):
        tier = rng.choice(tiers)
        status = FindingStatus.RETRACTED if rng.random() < 0.02 else FindingStatus.IN_REVIEW
        batch.append(
            Finding(
                project=projects[rng.randrange(30)],
                title=f"finding {i}",
                body="An induction head forms at step 300. " * 4,
                tier=tier,
                status=status,
                created_at=now - timedelta(minutes=n - i),
            )
        )
    Finding.objects.bulk_create(batch, batch_size=2000)
    finding_ids = list(Finding.objects.values_list("pk", flat=True))

    v1 = AgreementVersion.objects.create(
        version=1, title="A", text="v1", effective_at=now - timedelta(days=30)
    )
    v2 = AgreementVersion.objects.create(
        version=2, title="A", text="v2", effective_at=now - timedelta(days=1)
    )
    collaborator, expired, unaccepted = users[170], users[171], users[172]
    for u in users[170:200]:
        if u != unaccepted:
            AgreementAcceptance.objects.create(user=u, agreement=v2)
    AgreementAcceptance.objects.create(user=unaccepted, agreement=v1)
    grants = [
        Grant(group=g, project=projects[i], expires_at=now + timedelta(days=90), agreement=v2)
        for i, g in enumerate(partner_groups)
    ]
    for u, days in ((collaborator, 90), (expired, -1), (unaccepted, 90)):
        grants += [
            Grant(
                user=u,
                project=projects[10 + k],
                expires_at=now + timedelta(days=days),
                agreement=v2,
            )
            for k in range(2)
        ]
    grants += [
        Grant(user=collaborator, finding_id=fid, expires_at=now + timedelta(days=90), agreement=v2)
        for fid in rng.sample(finding_ids, 20)
    ]
    Grant.objects.bulk_create(grants)
    recused = users[151]
    Recusal.objects.bulk_create(
        Recusal(finding_id=fid, reviewer=recused, reason="coi")
        for fid in rng.sample(finding_ids, 200)
    )
    # "!" is Django's unusable-password marker (as above).
    admin = User.objects.create(username="admin", is_superuser=True, is_staff=True, password="!")  # noqa: S106
    return {
        "outsider": User.objects.create(username="outsider", password="!"),  # noqa: S106
        "member": users[0],
        "reviewer": users[150],
        "recused_reviewer": recused,
        "collaborator": collaborator,
        "expired_grant": expired,
        "unaccepted_agreement": unaccepted,
        "release_manager": users[165],
        "lab_admin": admin,
    }


def _guardian_models() -> tuple[Any, Any]:
    """guardian's direct foreign-key object permission models for findings, defined and
    created in the scratch database only (guardian picks them up by their foreign key)."""
    from django.db import connection, models
    from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

    class BenchFindingUserPermission(UserObjectPermissionBase):
        content_object = models.ForeignKey("experiments.Finding", on_delete=models.CASCADE)

        class Meta(UserObjectPermissionBase.Meta):
            app_label = "disclosure"

    class BenchFindingGroupPermission(GroupObjectPermissionBase):
        content_object = models.ForeignKey("experiments.Finding", on_delete=models.CASCADE)

        class Meta(GroupObjectPermissionBase.Meta):
            app_label = "disclosure"

    with connection.schema_editor() as editor:
        editor.create_model(BenchFindingUserPermission)
        editor.create_model(BenchFindingGroupPermission)
    return BenchFindingUserPermission, BenchFindingGroupPermission


def _grant_guardian(personas: dict[str, Viewer], user_perm: Any) -> dict[str, set[int]]:
    """One direct ``view_finding`` row per finding each persona sees under h3lab's policy
    (the anonymous persona is guardian's anonymous user). Returns the visible sets."""
    from django.contrib.auth.models import Permission, User
    from guardian.conf import settings as guardian_settings
    from guardian.utils import get_anonymous_user

    from disclosure import policy

    # h3lab gives guardian no anonymous user (ANONYMOUS_USER_NAME = None); the anchor needs one
    # to hold the public findings. Set in this scratch child process only.
    guardian_settings.ANONYMOUS_USER_NAME = "bench-anonymous"
    User.objects.create(username="bench-anonymous", password="!")  # noqa: S106 (unusable)
    view = Permission.objects.get(codename="view_finding", content_type__app_label="experiments")
    visible: dict[str, set[int]] = {}
    for name, user in personas.items():
        visible[name] = set(policy.visible_findings(user).values_list("pk", flat=True))
        if getattr(user, "is_superuser", False):
            continue  # guardian answers a superuser with every finding, as h3lab does
        holder = get_anonymous_user() if name == "anonymous" else user
        user_perm.objects.bulk_create(
            (user_perm(user=holder, permission=view, content_object_id=pk) for pk in visible[name]),
            batch_size=5000,
        )
    return visible


def _fresh(user: Viewer) -> Viewer:
    """A new user object for each request, as a request gets: nothing cached on it."""
    from django.contrib.auth.models import AnonymousUser, User

    if not isinstance(user, User):
        return AnonymousUser()
    return User(**{f.attname: getattr(user, f.attname) for f in User._meta.concrete_fields})


def _stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {
        "median": round(statistics.median(xs), 2),
        "p95": round(xs[int(0.95 * (len(xs) - 1))], 2),
        "min": round(xs[0], 2),
    }


def _measure(user: Viewer, reps: int) -> dict[str, Any]:
    """Page + capped count as the finding list does it, h3lab and guardian alternated."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from guardian.shortcuts import get_objects_for_user

    from disclosure import policy
    from disclosure.pagination import CappedPaginator
    from experiments.models import Finding

    def h3lab(u: Viewer) -> Any:
        return policy.visible_findings(u)

    def guardian(u: Viewer) -> Any:
        return get_objects_for_user(u, "experiments.view_finding", klass=Finding)

    contenders = {"h3lab": h3lab, "guardian": guardian}

    def once(visible: Any) -> tuple[float, float, int, str]:
        # What the list view does: build the visible queryset, count it (capped), then fetch
        # the first page (findings joined to projects). "count" includes building the queryset.
        u = _fresh(user)  # untimed: the request's user
        t0 = time.perf_counter()
        qs = visible(u).select_related("project")
        paginator = CappedPaginator(qs, PAGE, cap=COUNT_CAP)
        page = paginator.get_page(1)
        _ = paginator.count
        t1 = time.perf_counter()
        rows = list(page.object_list)
        t2 = time.perf_counter()
        return (t2 - t1) * 1000, (t1 - t0) * 1000, len(rows), paginator.count_label

    queries = {}
    for name, visible in contenders.items():
        for _ in range(WARMUP):
            once(visible)
        with CaptureQueriesContext(connection) as ctx:
            once(visible)
        queries[name] = len(ctx.captured_queries)
    samples: dict[str, list[tuple[float, float, int, str]]] = {name: [] for name in contenders}
    order = list(contenders)
    for rep in range(reps):
        for name in order if rep % 2 == 0 else order[::-1]:
            samples[name].append(once(contenders[name]))
    # Then h3lab alone, back to back: the same requests without guardian's in between, which
    # tells the cost of alternation itself (caches and buffers the other contender displaced).
    alone = [once(h3lab) for _ in range(reps)]
    result: dict[str, Any] = {}
    for name, ss in samples.items():
        result[name] = {
            "queries": queries[name],
            "rows": ss[0][2],
            "count": ss[0][3],
            "page_ms": _stats([s[0] for s in ss]),
            "count_ms": _stats([s[1] for s in ss]),
            "total_ms": _stats([s[0] + s[1] for s in ss]),
        }
    result["h3lab"]["alone_total_ms"] = _stats([s[0] + s[1] for s in alone])
    return result


def _work(backend: str, n: int, reps: int) -> dict[str, Any]:
    from django.contrib.auth.models import AnonymousUser
    from django.core.management import call_command
    from django.db import connection
    from guardian.shortcuts import get_objects_for_user

    from experiments.models import Finding

    _assert_scratch()
    call_command("migrate", verbosity=0)
    # A fixed seed so every run measures the same data; not used for anything secret.
    personas = {"anonymous": AnonymousUser(), **_populate(n, random.Random(1234))}  # noqa: S311
    user_perm, _group_perm = _guardian_models()
    visible = _grant_guardian(personas, user_perm)
    same = {
        p: set(
            get_objects_for_user(u, "experiments.view_finding", klass=Finding).values_list(
                "pk", flat=True
            )
        )
        == visible[p]
        for p, u in personas.items()
    }
    if not all(same.values()):
        raise CommandError(f"guardian and h3lab disagree on the visible set: {same}")
    if connection.vendor == "postgresql":
        with connection.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
            cur.execute("SELECT version()")
            version = cur.fetchone()[0].split(" on ")[0]
    else:
        with connection.cursor() as cur:
            cur.execute("ANALYZE")
            cur.execute("SELECT sqlite_version()")
            version = f"SQLite {cur.fetchone()[0]}"
    load_before = [round(x, 2) for x in os.getloadavg()]
    measured = {p: _measure(personas[p], reps) for p in PERSONAS}
    load_after = [round(x, 2) for x in os.getloadavg()]
    return {
        "backend": backend,
        "server": version,
        # DB_SERVER_SIDE_BINDING: statements prepared per connection instead of planned per request
        "server_side_binding": bool(
            connection.settings_dict.get("OPTIONS", {}).get("server_side_binding", False)
        ),
        "findings": n,
        "load_before": load_before,
        "load_after": load_after,
        "personas": {
            p: {"visible": len(visible[p]), **m["h3lab"], "guardian": m["guardian"]}
            for p, m in measured.items()
        },
    }


def render_table(report: dict[str, Any]) -> str:
    goal = report.get("goal_p95_ms", GOAL_P95_MS)
    lines = [f"machine: {report['machine']}"]
    for r in report["results"]:
        lines += [
            "",
            f"{r['backend']} ({r['server']}"
            f"{', server-side binding' if r.get('server_side_binding') else ''}), "
            f"{r['findings']:,} findings, "
            f"{report['repetitions']} alternated requests per contender; "
            f"load average before {r['load_before']}, after {r['load_after']}",
            "",
            "| persona | visible | shown | h3lab queries | h3lab page+count p50 / p95 / min ms "
            "| guardian queries | guardian page+count p50 / p95 / min ms | guardian ÷ h3lab p50 "
            f"| h3lab p95 ≤ {goal:g} ms | h3lab alone p50 / p95 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
        ]
        for p, m in r["personas"].items():
            h, g = m["total_ms"], m["guardian"]["total_ms"]
            a = m.get("alone_total_ms")
            alone = f"{a['median']} / {a['p95']}" if a else "—"
            lines.append(
                f"| {p} | {m['visible']:,} | {m['count']} | {m['queries']} "
                f"| {h['median']} / {h['p95']} / {h['min']} | {m['guardian']['queries']} "
                f"| {g['median']} / {g['p95']} / {g['min']} "
                f"| {g['median'] / h['median']:.1f}× | {'met' if h['p95'] <= goal else 'MISSED'} "
                f"| {alone} |"
            )
    return "\n".join(lines)

"""``manage.py bench_visibility``: the finding list's first page and count for each persona.

Runs against *scratch* databases only: a temporary SQLite file and a PostgreSQL database named
``h3lab_bench`` on the server of ``DATABASE_URL`` (or 127.0.0.1:5432), dropped and recreated.
Each (backend, size) runs in a child process whose only database is the scratch one, so the
user's data can never be touched. Prints a table and writes JSON.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import random
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
        parser.add_argument(
            "--worker", nargs=3, metavar=("BACKEND", "N", "JSON"), help=argparse_hidden()
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["worker"]:
            backend, n, out = opts["worker"]
            Path(out).write_text(json.dumps(_work(backend, int(n))))
            return
        sizes = [int(s) for s in opts["findings"].split(",")]
        results: list[dict[str, Any]] = []
        for backend in opts["backends"].split(","):
            for n in sizes:
                self.stderr.write(f"{backend}, {n} findings …")
                results.append(self._spawn(backend, n))
        report = {
            "machine": f"{os.cpu_count()}-core {platform.machine()}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}",
            "page_size": PAGE,
            "count_cap": COUNT_CAP,
            "repetitions": REPS,
            "results": results,
        }
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        self.stdout.write(render_table(report))
        self.stdout.write(f"\nwrote {out}")

    def _spawn(self, backend: str, n: int) -> dict[str, Any]:
        env = dict(os.environ)
        with tempfile.TemporaryDirectory(prefix="h3lab-bench-") as tmp:
            if backend == "sqlite":
                env["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
            elif backend == "postgresql":
                server = _pg_server_url()
                _recreate_pg(server)
                env["DATABASE_URL"] = f"{server}/{SCRATCH_PG}"
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
            subprocess.run([*cmd, "--worker", backend, str(n), str(out)], env=env, check=True)
            result: dict[str, Any] = json.loads(out.read_text())
            return result


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def _recreate_pg(server: str) -> None:
    import psycopg

    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {SCRATCH_PG}")
        conn.execute(f"CREATE DATABASE {SCRATCH_PG}")


# --- the child: populate the scratch database and measure ---------------------------------------


def _assert_scratch() -> None:
    db = settings.DATABASES["default"]
    name = str(db["NAME"])
    scratch = (db["ENGINE"].endswith("sqlite3") and "h3lab-bench-" in name) or name == SCRATCH_PG
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


def _measure(user: Viewer) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from disclosure import policy
    from disclosure.pagination import CappedPaginator

    def once() -> tuple[float, float, int, str]:
        # What the list view does: build the visible queryset, count it (capped), then fetch
        # the first page (findings joined to projects). "count" includes building the queryset.
        t0 = time.perf_counter()
        qs = policy.visible_findings(user).select_related("project")
        paginator = CappedPaginator(qs, PAGE, cap=COUNT_CAP)
        page = paginator.get_page(1)
        _ = paginator.count
        t1 = time.perf_counter()
        rows = list(page.object_list)
        t2 = time.perf_counter()
        return (t2 - t1) * 1000, (t1 - t0) * 1000, len(rows), paginator.count_label

    for _ in range(5):
        once()
    with CaptureQueriesContext(connection) as ctx:
        once()
    samples = [once() for _ in range(REPS)]

    def stats(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {
            "median": round(statistics.median(xs), 2),
            "p95": round(xs[int(0.95 * (len(xs) - 1))], 2),
        }

    return {
        "queries": len(ctx.captured_queries),
        "rows": samples[0][2],
        "visible": policy.visible_findings(user).count(),  # exact, untimed: for the table
        "count": samples[0][3],
        "page_ms": stats([s[0] for s in samples]),
        "count_ms": stats([s[1] for s in samples]),
        "total_ms": stats([s[0] + s[1] for s in samples]),
    }


def _work(backend: str, n: int) -> dict[str, Any]:
    from django.contrib.auth.models import AnonymousUser
    from django.core.management import call_command
    from django.db import connection

    _assert_scratch()
    call_command("migrate", verbosity=0)
    # A fixed seed so every run measures the same data; not used for anything secret.
    personas = {"anonymous": AnonymousUser(), **_populate(n, random.Random(1234))}  # noqa: S311
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
    return {
        "backend": backend,
        "server": version,
        "findings": n,
        "personas": {p: _measure(personas[p]) for p in PERSONAS},
    }


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"machine: {report['machine']}",
        "",
        "| backend | findings | persona | visible | shown | queries | page median / p95 ms "
        "| count median / p95 ms | page+count median / p95 ms |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        for p, m in r["personas"].items():
            lines.append(
                f"| {r['backend']} | {r['findings']:,} | {p} | {m['visible']:,} | {m['count']} "
                f"| {m['queries']} "
                f"| {m['page_ms']['median']} / {m['page_ms']['p95']} "
                f"| {m['count_ms']['median']} / {m['count_ms']['p95']} "
                f"| {m['total_ms']['median']} / {m['total_ms']['p95']} |"
            )
    return "\n".join(lines)

"""``manage.py bench_web``: the site under load, in the production shape.

1. Seeds a *scratch database* (``<name>_bench_web`` on the PostgreSQL server of
   ``DATABASE_URL``, or a temporary SQLite file for the embedded default; dropped afterwards,
   never the configured one): ``--runs`` runs (default 20,000) and ``--findings`` findings
   (default 6,000) over ten projects, pending release requests with votes and assessments,
   metric points behind the runs the clients open.
2. Starts gunicorn as compose does (``scripts/entrypoint.sh``: ``gunicorn --config
   gunicorn.conf.py``, DEBUG off, collected static files, ``--workers 3`` threaded workers of
   ``GUNICORN_THREADS`` (8) threads, persistent database connections as compose's web service
   keeps them (``DB_CONN_MAX_AGE`` 60 unless set), access log), with ``H3LAB_SERVER_TIMING=1``
   so every answer says how long Django and SQL took, the serving thread's CPU time and how
   many queries ran.
3. Drives a bounded closed loop from a separate process (:mod:`web.loadgen`): ``--clients``
   (default 10 and 50) signed-in clients, no think time, each picking at random among the
   finding list, a finding page, the runs list, a run page, its progress JSON (conditional,
   as a browser polls it) and the two API lists. The clients are researchers, reviewers and
   release managers (all members of a project, with a verified second factor where their
   role needs one).
4. Prints, per client count and endpoint: requests, throughput, client latency p50/p95/p99,
   errors, server time (``Server-Timing``) p50/p95 and queries per request; checks the goals
   of docs/benchmarks.md ("Web under load"); writes everything as JSON (``--out``), with the
   load average before and after (the clients share the machine with the server).
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.test.utils import override_settings
from django.urls import reverse
from django.utils import timezone

from experiments.management.commands.bench_platform import (
    database_url,
    master_key_env,
    scratch_database,
)

ROOT = Path(settings.BASE_DIR)
ENDPOINTS = (
    "finding list",
    "finding page",
    "runs list",
    "run page",
    "progress",
    "api findings",
    "api runs",
)
PAGES = ("finding list", "finding page", "runs list", "run page", "api findings", "api runs")
GOALS = {
    "throughput_rps": 100.0,  # at the largest client count
    "p95_ms": 500.0,
    "errors": 0,
    "page_server_p50_ms": 20.0,
    "progress_server_p50_ms": 3.0,
    "finding_page_queries": 15,
}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --- seeding ------------------------------------------------------------------------------------


def seed(n_runs: int, n_findings: int, rng: random.Random) -> dict[str, Any]:
    """The data set; returns the personas and the ids their clients open."""
    from django.contrib.auth.models import Group, User

    from disclosure.models import Assessment, ReleaseRequest, Vote
    from experiments.actions.projects import do_create_project
    from experiments.models import (
        Experiment,
        Finding,
        FindingStatus,
        MetricPoint,
        Run,
        RunStatus,
        Tier,
    )
    from h3lab.config import RunConfig, TaskConfig, TrainConfig

    config = RunConfig.build(
        preset="h3",
        n_layer=2,
        d_model=64,
        d_state=16,
        task=TaskConfig("induction_head", vocab_size=16, seq_len=64),
        train=TrainConfig(steps=2000),
    )
    board = Group.objects.get_or_create(name=settings.H3LAB_REVIEW_BOARD_GROUP)[0]
    managers = Group.objects.get_or_create(name=settings.H3LAB_RELEASE_MANAGERS_GROUP)[0]
    roles = {"researcher": None, "reviewer": board, "release_manager": managers}
    users: dict[str, User] = {}
    projects = []
    for i in range(10):
        members = []
        for role, group in roles.items():
            user = User.objects.create_user(f"{role}{i}", f"{role}{i}@lab.test")
            if group is not None:
                group.user_set.add(user)
            members.append(user)
            users.setdefault(role, user)
        projects.append(
            do_create_project(slug=f"p{i}", name=f"Project {i}", members=members, acting_user=None)
        )
    experiments = [
        Experiment.objects.create(project=p, name=f"exp-{j}") for p in projects for j in range(4)
    ]
    now = timezone.now()
    statuses = [RunStatus.SUCCEEDED] * 8 + [RunStatus.FAILED, RunStatus.RUNNING]
    Run.objects.bulk_create(
        (
            Run(
                experiment=(exp := experiments[i % len(experiments)]),
                project_id=exp.project_id,
                created_by=users["researcher"],
                name=f"run {i}",
                config=config.to_dict(),
                preset=config.preset,
                task=config.task.name,
                total_steps=2000,
                step=2000,
                status=statuses[i % len(statuses)],
                loss=0.1,
                created_at=now - timedelta(minutes=i),
                heartbeat_at=now - timedelta(minutes=i),
            )
            for i in range(n_runs)
        ),
        batch_size=2000,
    )
    tiers = [Tier.TEAM] * 8 + [Tier.REVIEW] * 5 + [Tier.PARTNERS] * 3 + [Tier.PUBLIC] * 4
    Finding.objects.bulk_create(
        (
            Finding(
                project=projects[i % len(projects)],
                title=f"Finding {i}: an induction head at step {i % 997}",
                body="An **induction head** forms; see the attached probe.\n\n" * 5,
                tier=(tier := tiers[i % len(tiers)]),
                status=FindingStatus.RELEASED if tier == Tier.PUBLIC else FindingStatus.DRAFT,
                created_at=now - timedelta(minutes=i),
            )
            for i in range(n_findings)
        ),
        batch_size=2000,
    )
    # The runs each project's clients open carry a chart's worth of metric points.
    opened: dict[int, list[int]] = {}
    for p in projects:
        opened[p.pk] = list(
            Run.objects.filter(project=p).order_by("-created_at").values_list("pk", flat=True)[:20]
        )
    MetricPoint.objects.bulk_create(
        (
            MetricPoint(run_id=pk, name=name, step=s * 20, value=1.0 / (s + 1))
            for pks in opened.values()
            for pk in pks
            for name in ("train_loss", "test_accuracy")
            for s in range(100)
        ),
        batch_size=5000,
    )
    through = Finding.runs.through
    run_of = {p.pk: opened[p.pk][0] for p in projects}
    rows = Finding.objects.values_list("pk", "project_id", "tier")
    through.objects.bulk_create(
        [through(finding_id=f, run_id=run_of[p]) for f, p, _ in rows], batch_size=5000
    )
    # Review: pending requests with an objection, an approval and an assessment.
    reviewers = list(User.objects.filter(groups=board).order_by("pk"))
    for f, _, _ in list(rows.filter(tier=Tier.REVIEW))[:200]:
        request = ReleaseRequest.objects.create(
            finding_id=f, from_tier=Tier.REVIEW, target_tier=Tier.PARTNERS
        )
        a, b = rng.sample(reviewers, 2)
        Vote.objects.create(request=request, finding_id=f, reviewer=a, kind="object", rationale="x")
        Vote.objects.create(request=request, finding_id=f, reviewer=b, kind="approve")
        Assessment.objects.create(
            finding_id=f, reviewer=a, capability_uplift=1, alignment_value=2, rationale="y"
        )
    # Fresh planner statistics, as autovacuum would have gathered on a live site: without them
    # PostgreSQL plans the visibility subqueries for empty tables.
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    return {"users": users, "opened_runs": opened}


def visible_finding_ids(user: Any, limit: int = 200) -> list[int]:
    from disclosure import policy

    ids = policy.visible_findings(user).order_by("-created_at").values_list("pk", flat=True)
    return list(ids[:limit])


def session_cookie(user: Any) -> str:
    """A signed-in session as after a password and, where the role needs it, a TOTP code."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    from disclosure import policy

    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    if policy.requires_second_factor(user):
        device, _ = TOTPDevice.objects.get_or_create(user=user, name="bench", confirmed=True)
        session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.create()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}"


def client_plans(seeded: dict[str, Any], n: int) -> list[dict[str, Any]]:
    from experiments.models import Project

    plans = []
    personas = sorted(seeded["users"])
    for i in range(n):
        role = personas[i % len(personas)]
        user = type(seeded["users"][role]).objects.get(username=f"{role}{i % 10}")
        project = Project.objects.get(slug=f"p{i % 10}")
        runs = seeded["opened_runs"][project.pk]
        findings = visible_finding_ids(user)
        plans.append(
            {
                "persona": role,
                "cookie": session_cookie(user),
                "paths": {
                    "finding list": [reverse("findings")],
                    "finding page": [reverse("finding", args=[f]) for f in findings],
                    "runs list": [reverse("runs")],
                    "run page": [reverse("run", args=[r]) for r in runs],
                    # A client has one run page open and polls its progress (as run.js does).
                    "progress": [reverse("run-progress", args=[runs[i % len(runs)]])],
                    "api findings": [reverse("api-finding-list")],
                    "api runs": [reverse("api-run-list")],
                },
            }
        )
    return plans


# --- the server ---------------------------------------------------------------------------------


class Gunicorn:
    """``gunicorn h3lab.wsgi`` as scripts/entrypoint.sh starts it, on a free local port."""

    def __init__(self, env: dict[str, str], workers: int, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "gunicorn.log"
        collect = [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"]
        subprocess.run(collect, cwd=ROOT, env=env, check=True)
        argv = [
            sys.executable, "-m", "gunicorn", "h3lab.wsgi",
            "--config", str(ROOT / "gunicorn.conf.py"),
            "--bind", f"127.0.0.1:{self.port}", "--workers", str(workers),
            "--access-logfile", str(workdir / "access.log"),
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            try:
                probe = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                probe.request("GET", "/", headers={"X-Forwarded-Proto": "https"})
                probe.getresponse().read()
                probe.close()
                break
            except (OSError, http.client.HTTPException):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = self.log.read_text()[-3000:]
                    raise CommandError(f"gunicorn did not start:\n{tail}") from None
                time.sleep(0.3)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def server_env(workdir: Path, secret_key: str) -> dict[str, str]:
    env = {
        **os.environ,
        **master_key_env(),
        "DATABASE_URL": database_url(connection.settings_dict),
        "DEBUG": "0",
        "SECRET_KEY": secret_key,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "USE_X_FORWARDED_PROTO": "1",
        "STATIC_ROOT": str(workdir / "static"),
        "H3LAB_VAR_DIR": str(workdir / "var"),
        "H3LAB_DATA_DIR": str(workdir / "data"),
        "H3LAB_SERVER_TIMING": "1",
        "LOG_LEVEL": "WARNING",
        # compose's web service keeps connections (a new PostgreSQL connection per request
        # cost ~30 % of the mix's worker CPU here: docs/benchmarks.md, "Web under load")
        "DB_CONN_MAX_AGE": os.environ.get("DB_CONN_MAX_AGE", "60"),
    }
    if "H3LAB_MASTER_KEYS" in env:
        env.pop("H3LAB_MASTER_KEY_FILE", None)
    return env


# --- the report ---------------------------------------------------------------------------------


def summarise(records: list[list[Any]], duration: float) -> dict[str, dict[str, Any]]:
    by: dict[str, list[list[Any]]] = defaultdict(list)
    for r in records:
        by[r[0]].append(r)
        by["all"].append(r)
    rows = {}
    for name in (*ENDPOINTS, "all"):
        rs = by.get(name, [])
        latency = [r[2] * 1000 for r in rs]
        app = [r[3] for r in rs if r[3] >= 0]
        db = [r[4] for r in rs if r[4] >= 0]
        queries = [r[5] for r in rs if r[5] >= 0]
        cpu = [r[6] for r in rs if len(r) > 6 and r[6] >= 0]
        rows[name] = {
            "requests": len(rs),
            "rps": len(rs) / duration,
            "p50_ms": percentile(latency, 50),
            "p95_ms": percentile(latency, 95),
            "p99_ms": percentile(latency, 99),
            # A redirect (to the login or second-factor page) is an error too.
            "errors": sum(1 for r in rs if r[1] not in (200, 304)),
            "not_modified": sum(1 for r in rs if r[1] == 304),
            "server_p50_ms": percentile(app, 50),
            "server_p95_ms": percentile(app, 95),
            "cpu_p50_ms": percentile(cpu, 50),
            "db_p50_ms": percentile(db, 50),
            "queries_min": min(queries) if queries else -1,
            "queries_max": max(queries) if queries else -1,
        }
    return rows


def fmt(v: float) -> str:
    return "–" if v != v else f"{v:.1f}"  # NaN: no sample


def table(levels: dict[int, dict[str, dict[str, Any]]]) -> str:
    head = (
        "| clients | endpoint | requests | req/s | p50 / p95 / p99 ms | errors | 304 "
        "| server p50 / p95 ms | server CPU p50 ms | SQL p50 ms | queries |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for clients, rows in levels.items():
        for name, r in rows.items():
            q = r["queries_min"], r["queries_max"]
            queries = "–" if q[0] < 0 else str(q[0]) if q[0] == q[1] else f"{q[0]}–{q[1]}"
            lines.append(
                f"| {clients} | {name} | {r['requests']} | {r['rps']:.1f} "
                f"| {fmt(r['p50_ms'])} / {fmt(r['p95_ms'])} / {fmt(r['p99_ms'])} "
                f"| {r['errors']} | {r['not_modified']} "
                f"| {fmt(r['server_p50_ms'])} / {fmt(r['server_p95_ms'])} "
                f"| {fmt(r['cpu_p50_ms'])} "
                f"| {fmt(r['db_p50_ms'])} | {queries} |"
            )
    return head + "\n".join(lines)


def goals(levels: dict[int, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    top = levels[max(levels)]["all"]
    rows = [levels[c] for c in levels]
    page_p50 = max(r[p]["server_p50_ms"] for r in rows for p in PAGES)
    progress_p50 = max(r["progress"]["server_p50_ms"] for r in rows)
    # The same two on the worker's CPU time, which load on the machine barely inflates.
    page_cpu = max(r[p]["cpu_p50_ms"] for r in rows for p in PAGES)
    progress_cpu = max(r["progress"]["cpu_p50_ms"] for r in rows)
    errors = sum(r["all"]["errors"] for r in rows)
    finding_q = max(r["finding page"]["queries_max"] for r in rows)
    # Within a level the count differs by the object's state (a public finding writes no audit
    # entry, a 304 reads no metric points); the most any request took must not grow with load.
    constant = all(len({r[p]["queries_max"] for r in rows}) == 1 for p in ENDPOINTS)

    def goal(name: str, value: Any, limit: Any, met: bool) -> dict[str, Any]:
        return {"goal": name, "value": value, "limit": limit, "met": met}

    return [
        goal(
            f"throughput at {max(levels)} clients (req/s)",
            round(top["rps"], 1),
            GOALS["throughput_rps"],
            top["rps"] >= GOALS["throughput_rps"],
        ),
        goal(
            f"p95 at {max(levels)} clients (ms)",
            round(top["p95_ms"], 1),
            GOALS["p95_ms"],
            top["p95_ms"] <= GOALS["p95_ms"],
        ),
        goal("errors, every level", errors, GOALS["errors"], errors == 0),
        goal(
            "server p50 per page, worst page (ms)",
            round(page_p50, 2),
            GOALS["page_server_p50_ms"],
            page_p50 <= GOALS["page_server_p50_ms"],
        ),
        goal(
            "progress JSON server p50 (ms)",
            round(progress_p50, 2),
            GOALS["progress_server_p50_ms"],
            progress_p50 <= GOALS["progress_server_p50_ms"],
        ),
        goal(
            "server CPU p50 per page, worst page (ms)",
            round(page_cpu, 2),
            GOALS["page_server_p50_ms"],
            page_cpu <= GOALS["page_server_p50_ms"],
        ),
        goal(
            "progress JSON server CPU p50 (ms)",
            round(progress_cpu, 2),
            GOALS["progress_server_p50_ms"],
            progress_cpu <= GOALS["progress_server_p50_ms"],
        ),
        goal(
            "finding page queries (max)",
            finding_q,
            GOALS["finding_page_queries"],
            finding_q <= GOALS["finding_page_queries"],
        ),
        goal("most queries per endpoint the same at every level", constant, True, constant),
    ]


class Command(BaseCommand):
    help = (
        "Load-test the web pages in the production shape: seed a scratch database, start "
        "gunicorn as compose does, drive a closed-loop mix of the finding list, finding page, "
        "runs list, run page, progress JSON and the two API lists from a separate process at "
        "each client count, and print throughput, p50/p95/p99, errors, server time and "
        "queries per endpoint against the goals (JSON in --out). Meaningful only with nothing "
        "else running. Example: manage.py bench_web --runs 2000 --findings 600 --clients 10 "
        "--duration 10 (a quick look)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--runs", type=int, default=20_000, help="runs seeded (default 20,000)")
        parser.add_argument(
            "--findings", type=int, default=6_000, help="findings seeded (default 6,000)"
        )
        parser.add_argument(
            "--clients", default="10,50", help="client counts, comma-separated (default 10,50)"
        )
        parser.add_argument(
            "--duration", type=float, default=30.0, help="seconds measured per client count"
        )
        parser.add_argument("--warmup", type=float, default=3.0, help="seconds not recorded")
        parser.add_argument(
            "--workers", type=int, default=3, help="gunicorn workers (default 3, as compose)"
        )
        parser.add_argument("--seed", type=int, default=17, help="random seed of the data")
        parser.add_argument(
            "--out", default="out/bench_web.json", help="JSON report (default out/bench_web.json)"
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        levels_wanted = [int(c) for c in str(opts["clients"]).split(",") if c.strip()]
        rng = random.Random(opts["seed"])  # noqa: S311 (reproducible data)
        with tempfile.TemporaryDirectory(prefix="h3lab-bench-web-") as tmp:
            workdir = Path(tmp)
            with scratch_database(workdir) as vendor:
                started = time.monotonic()
                seeded = seed(opts["runs"], opts["findings"], rng)
                self.stdout.write(
                    f"seeded {opts['runs']} runs, {opts['findings']} findings on {vendor} "
                    f"in {time.monotonic() - started:.1f} s"
                )
                # Sessions are signed with the server's key: the clients' are made with it too.
                key = secrets.token_urlsafe(50)
                server = Gunicorn(server_env(workdir, key), opts["workers"], workdir)
                try:
                    with override_settings(SECRET_KEY=key):
                        report = self.drive(server, seeded, levels_wanted, opts, workdir)
                finally:
                    server.stop()
                report["database"] = vendor
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        self.stdout.write(f"JSON: {out}")

    def drive(
        self,
        server: Gunicorn,
        seeded: dict[str, Any],
        levels_wanted: list[int],
        opts: dict[str, Any],
        workdir: Path,
    ) -> dict[str, Any]:
        levels: dict[int, dict[str, dict[str, Any]]] = {}
        load: dict[int, dict[str, list[float]]] = {}
        for n in levels_wanted:
            plan = {
                "base_url": server.url,
                "host": "127.0.0.1",
                "duration_s": opts["duration"],
                "warmup_s": opts["warmup"],
                "seed": opts["seed"],
                "clients": client_plans(seeded, n),
            }
            plan_path, out_path = workdir / f"plan{n}.json", workdir / f"result{n}.json"
            plan_path.write_text(json.dumps(plan))
            before = list(os.getloadavg())
            argv = [sys.executable, "-m", "web.loadgen", str(plan_path), str(out_path)]
            subprocess.run(argv, cwd=ROOT, check=True)
            after = list(os.getloadavg())
            result = json.loads(out_path.read_text())
            levels[n] = summarise(result["records"], opts["duration"])
            load[n] = {"before": before, "after": after}
            self.stdout.write(
                f"{n} clients: {levels[n]['all']['rps']:.1f} req/s; load average "
                f"{before[0]:.2f} before, {after[0]:.2f} after"
            )
        self.stdout.write(table(levels))
        checked = goals(levels)
        for g in checked:
            mark = "met" if g["met"] else "MISSED"
            self.stdout.write(f"{mark:>6}  {g['goal']}: {g['value']} (goal {g['limit']})")
        return {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "options": {k: opts[k] for k in ("runs", "findings", "duration", "workers", "seed")},
            "loadavg": load,
            "levels": {str(k): v for k, v in levels.items()},
            "goals": checked,
            "median_rps": statistics.median(v["all"]["rps"] for v in levels.values()),
        }

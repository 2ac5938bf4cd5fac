"""``manage.py bench_platform``: how fast a submitted run starts, and what the run pages cost.

1. **submit → running**: for each broker (the embedded ``filesystem://`` one and Redis), start
   a real ``celery worker`` subprocess, submit runs through :func:`check_submit_run` one at a
   time and measure from the submit call to the row's ``started_at`` (the worker's claim).
   The runs train one step; the first one warms the worker up (torch import) and is not
   counted.
2. **pages**: the runs list, a run page and its progress JSON, rendered by the Django test
   client with ``--runs`` runs in the database: median/p95 latency and the SQL query count,
   also measured at a small size first, so a count that grows with the data shows up.

SECURITY/data: everything happens in a *scratch database* created for the benchmark and
dropped afterwards, never the configured one: a temporary SQLite file for the embedded
default, or ``<name>_bench_platform`` on the PostgreSQL server named by ``DATABASE_URL``. Artifacts,
run folders and the broker live in a temporary folder.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext, override_settings
from django.urls import reverse
from django.utils import timezone

ROOT = Path(settings.BASE_DIR)
FINAL = ("succeeded", "failed", "cancelled")


def database_url(settings_dict: dict[str, Any]) -> str:
    """A DATABASE_URL naming the database described by a Django ``settings_dict``."""
    if settings_dict["ENGINE"] == "django.db.backends.sqlite3":
        return f"sqlite:///{Path(str(settings_dict['NAME'])).resolve()}"
    auth = quote(settings_dict.get("USER") or "", safe="")
    if settings_dict.get("PASSWORD"):
        auth += ":" + quote(settings_dict["PASSWORD"], safe="")
    host = settings_dict.get("HOST") or "localhost"
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{auth}@{host}{port}/{settings_dict['NAME']}"


def master_key_env() -> dict[str, str]:
    """Workers encrypt artifacts with the master key of this process (see vault.keystore)."""
    from vault import keystore

    keystore.keyring()  # creates the development key file if that is how keys are configured
    if settings.H3LAB_MASTER_KEYS:
        return {"H3LAB_MASTER_KEYS": settings.H3LAB_MASTER_KEYS}
    return {"H3LAB_MASTER_KEY_FILE": str(settings.H3LAB_MASTER_KEY_FILE)}


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]
    return {
        "n": len(values),
        "median_s": statistics.median(ordered),
        "p95_s": p95,
        "max_s": ordered[-1],
    }


@contextmanager
def scratch_database(workdir: Path) -> Iterator[str]:
    """Create, migrate and switch to a scratch database; drop it afterwards. Yields its kind."""
    s = connection.settings_dict
    s.setdefault("TEST", {})
    if s["ENGINE"] == "django.db.backends.sqlite3":
        s["TEST"]["NAME"] = str(workdir / "bench.sqlite3")
    else:
        s["TEST"]["NAME"] = f"{s['NAME']}_bench_platform"
    old_name = s["NAME"]
    connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield connection.vendor
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


BROKER_ENV = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")


def use_broker(url: str, options: dict[str, Any], result_backend: str) -> None:
    """Point the (already configured) Celery app at another broker for the next sends."""
    from h3lab.celery import app, ensure_embedded_dirs

    # Celery reads these two from the environment before its configuration: set both.
    os.environ["CELERY_BROKER_URL"] = url
    os.environ["CELERY_RESULT_BACKEND"] = result_backend
    conf: Any = app.conf
    conf.broker_url = url
    conf.broker_transport_options = options
    conf.result_backend = result_backend
    # Celery caches the connection pool, producer pool and backend built from the old URLs;
    # kombu keeps the pools in a global registry, so clear that too (closing them).
    from kombu import pools

    pools.reset()
    internals: Any = app
    internals._pool = None
    internals.amqp._producer_pool = None
    internals._backend_cache = None
    internals._local = threading.local()
    ensure_embedded_dirs(conf)


@contextmanager
def celery_broker_restored() -> Iterator[None]:
    """Put the Celery app's broker settings back as they were (the command switches them)."""
    from h3lab.celery import app

    saved_env = {k: os.environ.get(k) for k in BROKER_ENV}
    saved = (
        str(app.conf.broker_url),
        dict(app.conf.broker_transport_options or {}),
        str(app.conf.result_backend),
    )
    try:
        yield
    finally:
        use_broker(*saved)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Worker:
    """A ``celery worker`` subprocess as ``make run`` starts it (prefork, concurrency 1)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        argv = [
            sys.executable, "-m", "celery", "-A", "h3lab.celery", "worker",
            "--queues=cpu,gpu,default", "--concurrency=1", "--prefetch-multiplier=1",
            f"--hostname=bench-{uuid.uuid4().hex[:6]}@%h", "--loglevel=INFO",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while "ready." not in log_path.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = log_path.read_text(errors="replace")[-2000:]
                raise CommandError(f"the benchmark worker did not start:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise CommandError(f"timed out waiting for {what}")
        time.sleep(0.005)
    return value


def started_at(pk: int) -> datetime | None:
    from experiments.models import Run

    return Run.objects.filter(pk=pk).values_list("started_at", flat=True).first()


def is_final(pk: int) -> bool:
    from experiments.models import Run

    return Run.objects.filter(pk=pk, status__in=FINAL).exists()


class Command(BaseCommand):
    help = "Benchmark submit→running latency per broker and the run pages at scale."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", default="out/bench_platform.json")
        parser.add_argument("--runs", type=int, default=10_000, help="runs in the database")
        parser.add_argument("--samples", type=int, default=50, help="submissions per broker")
        parser.add_argument("--requests", type=int, default=20, help="requests per page")
        parser.add_argument(
            "--brokers",
            default="filesystem,redis",
            help="comma-separated: filesystem, redis",
        )
        configured = os.environ.get("CELERY_BROKER_URL", "")
        parser.add_argument(
            "--redis-url",
            default=configured if configured.startswith("redis") else "redis://127.0.0.1:6379/0",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        # SIGTERM unwinds like Ctrl-C, so the worker is stopped and the scratch database dropped.
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        try:
            self._bench(opts)
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _bench(self, opts: dict[str, Any]) -> None:
        brokers = [b.strip() for b in opts["brokers"].split(",") if b.strip()]
        unknown = set(brokers) - {"filesystem", "redis"}
        if unknown:
            raise CommandError(f"unknown broker(s): {', '.join(sorted(unknown))}")
        report: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "arch": platform.machine(),
                "python": platform.python_version(),
            },
            "params": {k: opts[k] for k in ("runs", "samples", "requests")},
        }
        with (
            tempfile.TemporaryDirectory(prefix="h3lab-bench-") as tmp,
            override_settings(
                MEDIA_ROOT=Path(tmp) / "data",
                RUNS_DIR=Path(tmp) / "data" / "runs",
                ARTIFACTS_DIR=Path(tmp) / "data" / "artifacts",
                ALLOWED_HOSTS=[*settings.ALLOWED_HOSTS, "testserver"],
            ),
            celery_broker_restored(),
        ):
            work = Path(tmp)
            with scratch_database(work) as vendor:
                report["database"] = vendor
                user, project = self._lab()
                report["submit_to_running"] = {
                    broker: self._latency(broker, opts, work, user, project) for broker in brokers
                }
                report["pages"] = self._pages(opts, user, project)
        out = Path(opts["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        self.stdout.write(render_table(report))
        self.stdout.write(f"\nwritten to {out}")

    # --- setup ----------------------------------------------------------------------------------

    def _lab(self) -> tuple[User, Any]:
        from experiments.actions.projects import do_create_project

        user = User.objects.create_user("bench", password=uuid.uuid4().hex)
        project = do_create_project(slug="bench", name="Bench", members=[user], acting_user=None)
        return user, project

    def _config(self) -> dict[str, Any]:
        from h3lab.config import RunConfig, TaskConfig, TrainConfig

        return RunConfig.build(
            preset="h3",
            n_layer=1,
            d_model=8,
            d_state=4,
            task=TaskConfig("induction_head", vocab_size=4, seq_len=8, num_train=8, num_test=4),
            train=TrainConfig(
                steps=1, batch_size=4, eval_every=1, checkpoint_every=9, device="cpu"
            ),
        ).to_dict()

    # --- submit → running -------------------------------------------------------------------------

    def _latency(
        self, broker: str, opts: dict[str, Any], work: Path, user: User, project: Any
    ) -> dict[str, Any]:
        from experiments.actions.runs import check_submit_run

        bdir = work / f"broker-{broker}"
        env = {
            **os.environ,
            "DATABASE_URL": database_url(connection.settings_dict),
            "H3LAB_VAR_DIR": str(bdir),
            "H3LAB_DATA_DIR": str(settings.MEDIA_ROOT),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **master_key_env(),
        }
        if broker == "filesystem":
            options = {
                **settings.CELERY_BROKER_TRANSPORT_OPTIONS,
                "data_folder_in": str(bdir / "broker" / "queue"),
                "data_folder_out": str(bdir / "broker" / "queue"),
                "control_folder": str(bdir / "broker" / "control"),
                "polling_interval": 0.1,
            }
            backend = f"file://{bdir / 'results'}"
            env.update(CELERY_BROKER_URL="filesystem://", CELERY_RESULT_BACKEND=backend)
            use_broker("filesystem://", options, backend)
        else:
            import redis

            url = opts["redis_url"]
            try:
                redis.Redis.from_url(url, socket_connect_timeout=2).ping()
            except redis.RedisError as exc:
                self.stderr.write(f"redis: skipped ({exc})")
                return {"skipped": f"Redis not reachable at {url}: {exc}"}
            prefix = f"h3lab-bench-{uuid.uuid4().hex[:8]}:"
            options = {"visibility_timeout": 3600, "global_keyprefix": prefix}
            backend = url.rsplit("/", 1)[0] + "/1"
            env.update(
                CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=backend, H3LAB_BROKER_PREFIX=prefix
            )
            use_broker(url, options, backend)
        bdir.mkdir(parents=True, exist_ok=True)
        self.stdout.write(f"{broker}: starting a worker…")
        worker = Worker(env, work / f"worker-{broker}.log")
        latencies: list[float] = []
        try:
            for i in range(opts["samples"] + 1):
                t0 = timezone.now()
                run = check_submit_run(
                    project=project, config=self._config(), experiment_name="bench",
                    name=f"{broker} {i}", acting_user=user,
                )  # fmt: skip
                started = wait(
                    partial(started_at, run.pk), timeout=180, what=f"run {run.pk} to start"
                )
                if i:  # the first run warms the worker up (imports torch)
                    latencies.append((started - t0).total_seconds())
                wait(partial(is_final, run.pk), timeout=180, what=f"run {run.pk} to finish")
                time.sleep(0.05)  # let the worker return to the broker
        finally:
            worker.stop()
            if broker == "redis":
                import redis

                client = redis.Redis.from_url(opts["redis_url"])
                for key in client.scan_iter(match=f"{options['global_keyprefix']}*"):
                    client.delete(key)
        result: dict[str, Any] = summary(latencies) if latencies else {"n": 0}
        self.stdout.write(f"{broker}: {result}")
        return result

    # --- pages ------------------------------------------------------------------------------------

    def _pages(self, opts: dict[str, Any], user: User, project: Any) -> dict[str, Any]:
        from experiments.models import Run

        client = Client()
        client.force_login(user)
        target = self._fill(project, user, n=min(100, opts["runs"]))
        small = self._measure(client, target, opts["requests"])
        self.stdout.write(f"pages at {Run.objects.count()} runs: measured")
        self._fill(project, user, n=opts["runs"])
        large = self._measure(client, target, opts["requests"])
        n_runs = Run.objects.count()
        self.stdout.write(f"pages at {n_runs} runs: measured")
        pages: dict[str, Any] = {}
        for name, stats in large.items():
            pages[name] = {
                **stats,
                "runs_in_db": n_runs,
                "queries_at_small_size": small[name]["queries"],
                "constant_queries": small[name]["queries"] == stats["queries"],
            }
        return pages

    def _fill(self, project: Any, user: User, *, n: int) -> int:
        """Bulk-create runs until the database holds ``n``; returns a run with metrics."""
        from experiments.models import Experiment, MetricPoint, Run

        exp, _ = Experiment.objects.get_or_create(project=project, name="bench-pages")
        cfg = self._config()
        now = timezone.now()
        have = Run.objects.count()
        statuses = ["succeeded"] * 6 + ["failed", "cancelled", "running", "queued"]
        batch = [
            Run(
                experiment=exp, project=project, created_by=user, config=cfg, preset="h3",
                task="induction_head", total_steps=1000, step=1000 if i % 10 < 6 else 500,
                status=statuses[i % 10], loss=1.5, accuracy=0.5, test_accuracy=0.5,
                created_at=now - timedelta(seconds=n - i), name=f"bulk {i}",
            )
            for i in range(have, n)
        ]  # fmt: skip
        Run.objects.bulk_create(batch, batch_size=1000)
        target = Run.objects.filter(experiment=exp).order_by("pk").first()
        if target is None:  # the latency runs may already make up ``n``
            target = Run.objects.create(
                experiment=exp, project=project, created_by=user, config=cfg, preset="h3",
                task="induction_head", total_steps=1000, step=1000, status="succeeded",
            )  # fmt: skip
        if not MetricPoint.objects.filter(run=target).exists():
            MetricPoint.objects.bulk_create(
                MetricPoint(run=target, name=name, step=s, value=1.0 / (s + 1))
                for name in ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
                for s in range(0, 1000, 4)
            )
        return target.pk

    def _measure(self, client: Client, run_pk: int, requests: int) -> dict[str, dict[str, Any]]:
        urls = {
            "runs_list": reverse("runs"),
            "run_page": reverse("run", args=[run_pk]),
            "run_progress_json": reverse("run-progress", args=[run_pk]),
        }
        out: dict[str, dict[str, Any]] = {}
        for name, url in urls.items():
            client.get(url)  # warm caches (templates, connection)
            times: list[float] = []
            queries = 0
            for _ in range(requests):
                with CaptureQueriesContext(connection) as ctx:
                    t = time.perf_counter()
                    response = client.get(url)
                    times.append(time.perf_counter() - t)
                if response.status_code != 200:
                    raise CommandError(f"{url} answered {response.status_code}")
                queries = len(ctx.captured_queries)
            out[name] = {"url": url, **summary(times), "queries": queries}
        return out


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"\nPlatform benchmark — {report['machine']['cpus']} CPUs {report['machine']['arch']}, "
        f"database {report['database']}",
        "",
        "submit → running      n     median     p95      max",
    ]
    for broker, r in report["submit_to_running"].items():
        if "skipped" in r:
            lines.append(f"  {broker:<17} skipped: {r['skipped']}")
        elif r.get("n"):
            lines.append(
                f"  {broker:<17} {r['n']:>3}  {r['median_s'] * 1000:7.0f} ms "
                f"{r['p95_s'] * 1000:6.0f} ms {r['max_s'] * 1000:6.0f} ms"
            )
    lines += ["", "page (runs in db)          median     p95   queries  (at small size)"]
    for name, r in report["pages"].items():
        lines.append(
            f"  {name:<18} {r['runs_in_db']:>6}  {r['median_s'] * 1000:6.1f} ms "
            f"{r['p95_s'] * 1000:6.1f} ms  {r['queries']:>4}     ({r['queries_at_small_size']})"
        )
    return "\n".join(lines)

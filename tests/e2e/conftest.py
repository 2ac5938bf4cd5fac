"""Real Celery workers against the test database.

A worker is a ``celery -A h3lab.celery worker`` subprocess consuming from the session's broker
namespace (see ``tests/conftest.py::test_broker``: a temporary folder for the embedded
filesystem broker, a key prefix on Redis) and writing to the test database, which the test
process commits to (``transactional_db``/``live_server``):

- SQLite: the test database is a file (``TEST.NAME`` = ``var/test.sqlite3``, WAL mode), so the
  worker opens the same file.
- PostgreSQL: the worker connects to the ``test_<name>`` database pytest-django created.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection, connections

from experiments.models import Run

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0  # a loaded 2-core machine imports Django + Celery slowly


def database_url() -> str:
    """A DATABASE_URL for the test database this process is using."""
    s = connection.settings_dict
    if s["ENGINE"] == "django.db.backends.sqlite3":
        name = str(s["NAME"])
        if name == ":memory:" or "mode=memory" in name:
            pytest.skip("an in-memory SQLite test database cannot be shared with a worker")
        return f"sqlite:///{Path(name).resolve()}"
    if s["ENGINE"] == "django.db.backends.postgresql":
        auth = quote(s["USER"] or "", safe="")
        if s.get("PASSWORD"):
            auth += ":" + quote(s["PASSWORD"], safe="")
        host = s.get("HOST") or "localhost"
        port = f":{s['PORT']}" if s.get("PORT") else ""
        return f"postgres://{auth}@{host}{port}/{s['NAME']}"
    pytest.skip(f"no worker support for {s['ENGINE']}")
    raise AssertionError  # unreachable; pytest.skip raises


def master_key_env() -> dict[str, str]:
    """The worker must encrypt artifacts with the master key this process decrypts with."""
    from vault import keystore

    keystore.keyring()  # creates the development key file if that is how keys are configured
    if settings.H3LAB_MASTER_KEYS:
        return {"H3LAB_MASTER_KEYS": settings.H3LAB_MASTER_KEYS}
    return {"H3LAB_MASTER_KEY_FILE": str(settings.H3LAB_MASTER_KEY_FILE)}


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    name: str
    extra: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker's whole process group: no cleanup runs, as on OOM or power loss."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, grace: float = 20.0) -> None:
        if not self.alive():
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or predicate}")
        time.sleep(interval)


def run_row(pk: int) -> Run:
    return Run.objects.get(pk=pk)


@pytest.fixture(autouse=True)
def _empty_broker(test_broker: dict[str, str]) -> None:
    """Every end-to-end test starts with the session's queues empty, before any other fixture
    submits work: messages an earlier test sent and no worker took (runs submitted by web
    tests, reaper ticks) would otherwise reach this test's workers first (7 of them by the
    time the worker tests ran, in a partial run)."""
    from h3lab.celery import app

    if discarded := app.control.purge():
        print(f"discarded {discarded} message(s) left in the session's queues by earlier tests")


@pytest.fixture
def start_worker(
    test_broker: dict[str, str], tmp_path: Path, transactional_db: None
) -> Iterator[Callable[..., Worker]]:
    """Start real workers (``beat=True`` embeds the beat scheduler, i.e. the reaper, whose
    ticks go to the ``control`` queue); all are stopped at teardown, before the test database
    is flushed."""
    workers: list[Worker] = []
    var_dir = tmp_path / "worker-var"
    var_dir.mkdir()

    def start(
        *,
        beat: bool = False,
        env: dict[str, str] | None = None,
        queues: str = "cpu,gpu,default,control",
        wait_ready: bool = True,
    ) -> Worker:
        name = f"e2e-{uuid.uuid4().hex[:6]}"
        full_env = {
            **os.environ,
            **test_broker,
            "DATABASE_URL": database_url(),
            "H3LAB_VAR_DIR": str(var_dir),  # beat schedule, results: never the developer's var/
            "H3LAB_DATA_DIR": str(settings.MEDIA_ROOT),  # same artifacts/workdirs as the test
            "H3LAB_HEARTBEAT_S": "1",
            # the test's audit checkpoint key and folder: a worker's checkpoints verify here
            "H3LAB_AUDIT_KEY_FILE": str(settings.H3LAB_AUDIT_KEY_FILE),
            "H3LAB_AUDIT_CHECKPOINT_DIR": str(settings.H3LAB_AUDIT_CHECKPOINT_DIR),
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            **master_key_env(),
            **(env or {}),
        }
        argv = [
            sys.executable, "-m", "celery", "-A", "h3lab.celery", "worker",
            f"--queues={queues}", "--pool=threads", "--concurrency=1",
            "--prefetch-multiplier=1", f"--hostname={name}@%h", "--loglevel=INFO",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        if beat:
            argv += ["--beat", f"--schedule={var_dir / f'beat-{name}'}"]
        log_path = tmp_path / f"{name}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        worker = Worker(proc=proc, log_path=log_path, name=name, extra=env or {})
        workers.append(worker)
        if not wait_ready:  # e.g. a worker expected to refuse to start
            return worker
        try:
            wait_for(
                lambda: "ready." in worker.log() or not worker.alive(),
                timeout=READY_TIMEOUT_S,
                what=f"worker {name} to start",
            )
        except AssertionError:
            worker.kill()
            raise AssertionError(f"worker {name} did not start:\n{worker.log()[-3000:]}") from None
        assert worker.alive(), f"worker {name} exited:\n{worker.log()[-3000:]}"
        return worker

    yield start
    for worker in workers:
        worker.stop()
        # Printed at teardown, so pytest shows it with a failing test's report (and only then).
        print(f"--- worker {worker.name} {worker.extra or ''}: last lines of its log ---")
        print(worker.log()[-6000:])


# --- a real browser (headless Chromium, the system package) --------------------------------------

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if shutil.which(p)), None
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); skipping browser test")
    sync_api = pytest.importorskip("playwright.sync_api")
    # Playwright's sync API runs an event loop on this thread; the ORM calls the test makes
    # in between are still synchronous, so let Django allow them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context()
        context.set_default_timeout(60_000)
        yield context.new_page()
        context.close()
        browser.close()
        # ORM calls made while Playwright runs use a connection of their own (its greenlet has
        # its own context); close it here, or PostgreSQL refuses to drop the test database.
        connections.close_all()

"""Private PostgreSQL and Redis servers for fault tests.

Fault tests stop, pause, restart and empty their servers, so they never touch the shared ones
(127.0.0.1:5432 and :6379). Each server here is started on a free port in a temporary folder
and stopped at teardown; nothing else is signalled.

- :class:`PrivatePostgres`: ``initdb`` + ``pg_ctl`` (as the ``postgres`` user when run as root,
  since PostgreSQL refuses to run as root), ``fsync=off``. ``stop``/``start``/``restart``,
  ``pause``/``resume`` (SIGSTOP/SIGCONT of every server process: connections hang, as on a
  frozen VM or a network partition), ``terminate_backends`` (as a failover or pooler restart).
- :class:`PrivateRedis`: ``redis-server`` with no persistence, so a restart comes back empty
  (as the issue's "Redis restarted empty"); ``pause``/``resume`` likewise.
- :func:`migrated_database`: a database on a private server with the project's schema (migrated
  once per server into a template, then copied per test with ``CREATE DATABASE … TEMPLATE``).
- :func:`use_database`: point this process's ``default`` connection at such a database for the
  duration of a block, so actions and the ORM run against the private server.

Requires the PostgreSQL server binaries (``pg_ctl`` / ``initdb`` on PATH or under
``/usr/lib/postgresql/*/bin``) and ``redis-server``; tests skip with a reason where they are
missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: drop to the ``postgres`` account when we are root."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("running as root without runuser: cannot start a private PostgreSQL")
    return [runuser, "-u", "postgres", "--"]


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port (user ``postgres``, trust auth)."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (initdb and pg_ctl):
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.initdb: str = initdb
        self.pg_ctl: str = pg_ctl
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="h3lab-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.prefix = _as_postgres_user()
        if self.prefix:
            shutil.chown(self.base, user="postgres")
        subprocess.run(
            [*self.prefix, self.initdb, "-D", str(self.data), "-U", "postgres",
             "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True,
        )  # fmt: skip
        self._template_ready = False

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.base} "
            "-c fsync=off -c full_page_writes=off -c max_connections=60"
        )
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-o", opts,
             "-w", "-t", str(int(timeout)), "start"],
            check=True, capture_output=True,
        )  # fmt: skip
        _wait_port(self.port, timeout)

    def stop(self, mode: str = "fast") -> None:
        """``fast`` (clients disconnected, clean shutdown) or ``immediate`` (as a crash)."""
        self.resume()
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop"],
            check=False, capture_output=True,
        )  # fmt: skip

    def restart(self, downtime: float = 0.0, mode: str = "fast") -> None:
        self.stop(mode)
        time.sleep(downtime)
        self.start()

    def pids(self) -> list[int]:
        pid_file = self.data / "postmaster.pid"
        try:
            postmaster = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        out = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout
        return [postmaster, *(int(p) for p in out.split())]

    def pause(self) -> None:
        """Freeze every server process (connections hang; nothing is refused)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def terminate_backends(self, dbname: str | None = None) -> int:
        """Kill every client connection (to ``dbname``, or all but ours), as a failover does."""
        import psycopg

        where = "pid <> pg_backend_pid() AND backend_type = 'client backend'"
        if dbname:
            where += f" AND datname = '{dbname}'"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            query = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {where}"  # noqa: S608
            return len(conn.execute(query).fetchall())

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # --- databases ---------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def settings_dict(self, dbname: str) -> dict[str, Any]:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": dbname,
            "USER": "postgres",
            "PASSWORD": "",
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
        }

    def sql(self, statement: str, dbname: str = "postgres") -> list[tuple[Any, ...]]:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            cur = conn.execute(statement)
            return list(cur.fetchall()) if cur.description else []

    def migrated_database(self, env: dict[str, str] | None = None) -> str:
        """A fresh database holding the project's migrated schema; returns its name."""
        if not self._template_ready:
            self.sql("CREATE DATABASE h3lab_template")
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                cwd=ROOT, check=True, capture_output=True,
                env={**os.environ, **(env or {}), "DATABASE_URL": self.url("h3lab_template")},
            )  # fmt: skip
            self._template_ready = True
        name = f"h3lab_{uuid.uuid4().hex[:8]}"
        self.sql(f"CREATE DATABASE {name} TEMPLATE h3lab_template")
        return name


class PrivateRedis:
    """A throwaway Redis on a free port, with no persistence: a restart comes back empty."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if not self.binary:
            pytest.skip("redis-server is not installed")
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="h3lab-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        assert self.binary
        log = (self.base / "server.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.base)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        _wait_port(self.port, timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, downtime: float = 0.0) -> None:
        """Stop and start again, empty (no persistence): every queued message is lost."""
        self.stop()
        time.sleep(downtime)
        self.start()

    def pause(self) -> None:
        if self.proc:
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def use_database(settings_dict: dict[str, Any]) -> Iterator[None]:
    """Point this process's ``default`` connection at another database for the block (the ORM,
    actions and policy then read and write there); restore the test database afterwards."""
    from django.db import connections
    from django.db.backends.postgresql.base import DatabaseWrapper
    from django.db.utils import ConnectionHandler

    full = ConnectionHandler().settings  # defaults for every key Django expects
    base = dict(full["default"])
    base["OPTIONS"] = {}  # the test database's options may be SQLite's
    base.update(settings_dict)
    base.setdefault("TEST", {})
    previous = connections["default"]
    wrapper = DatabaseWrapper(base, alias="default")
    connections["default"] = wrapper
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            wrapper.close()
        connections["default"] = previous


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.close()

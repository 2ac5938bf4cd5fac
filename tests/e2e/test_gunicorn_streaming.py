"""The compose gunicorn (gunicorn.conf.py) streams a download that takes longer than its
worker timeout to the end, with the right digest (issue 12, item 7: a 64 MiB artifact used to
stop at 16.9 MB when the sync worker was killed at its 30 s timeout).

A real gunicorn process serves the test database; the client reads slowly, through a small
receive buffer, so the response is still streaming well after ``GUNICORN_TIMEOUT`` seconds.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse

from experiments.storage import store_file
from tests import factories
from tests.conftest import Lab, login
from tests.e2e.conftest import ROOT, database_url, master_key_env, wait_for
from tests.servers import free_port

pytestmark = pytest.mark.e2e

TIMEOUT_S = 2  # gunicorn's worker timeout in this test
SIZE = 16 * 1024 * 1024
CHUNK = 64 * 1024
CHUNK_PAUSE_S = 0.025  # ≈ 2.5 MiB/s: about 6 s for the whole artifact, 3 × the timeout


@pytest.fixture
def gunicorn(tmp_path: Path, transactional_db: None) -> Iterator[tuple[int, Path]]:
    """``gunicorn --config gunicorn.conf.py h3lab.wsgi`` on a free port, one worker."""
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),
        "H3LAB_DATA_DIR": str(settings.MEDIA_ROOT),
        "H3LAB_VAR_DIR": str(tmp_path / "var"),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
        "GUNICORN_THREADS": "2",
        "GUNICORN_TIMEOUT": str(TIMEOUT_S),
        "PYTHONUNBUFFERED": "1",
        **master_key_env(),
    }
    argv = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py", "h3lab.wsgi"]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, timeout=90, interval=0.3, what="gunicorn to answer /healthz")
        yield port, log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def test_a_download_slower_than_the_worker_timeout_streams_to_the_end(
    lab: Lab, gunicorn: tuple[int, Path], tmp_path: Path
) -> None:
    port, log_path = gunicorn
    run = factories.make_run(lab.project, name="big")
    data = os.urandom(SIZE)
    src = tmp_path / "weights.bin"
    src.write_bytes(data)
    artifact = store_file(run, src, "weights.bin")
    artifact.save()
    session = login(lab.alice).cookies[settings.SESSION_COOKIE_NAME].value

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CHUNK)  # little buffering
    conn.request(
        "GET",
        reverse("artifact-download", args=[artifact.pk]),
        headers={"Cookie": f"{settings.SESSION_COOKIE_NAME}={session}"},
    )
    started = time.monotonic()
    response = conn.getresponse()
    assert response.status == 200, response.read()[:500]
    digest, received = hashlib.sha256(), 0
    while chunk := response.read(CHUNK):
        digest.update(chunk)
        received += len(chunk)
        time.sleep(CHUNK_PAUSE_S)
    elapsed = time.monotonic() - started

    assert received == SIZE, f"cut off at {received} of {SIZE} bytes after {elapsed:.1f}s"
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert elapsed > 2 * TIMEOUT_S, f"the download took only {elapsed:.1f}s: not a fair test"
    log = log_path.read_text()
    assert "WORKER TIMEOUT" not in log, log[-2000:]
    # Log lines carry time, level and logger (h3lab/logformat.py).
    assert any(" INFO gunicorn.error " in line and line[:4].isdigit() for line in log.splitlines())

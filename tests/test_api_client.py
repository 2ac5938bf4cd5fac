"""The terminal client (``python -m h3lab.client``) against a live server: the real thing, in
a subprocess, over HTTP.

The end-to-end test adds a real Celery worker (the platform's ``start_worker`` fixture from
tests/e2e/conftest.py): submit from flags, watch to success, list and download an artifact,
export the metrics as CSV — a job handled entirely from a terminal.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from api import actions as api_actions
from experiments.models import Artifact, RunStatus
from tests import factories
from tests.conftest import Lab
from tests.e2e import conftest as e2e

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]
ROOT = e2e.ROOT
start_worker = e2e.start_worker  # the platform's real-worker fixture, reused


def client_env(url: str, token: str, home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("H3LAB_", "DJANGO_")) and k != "XDG_CONFIG_HOME"
    }
    env.update(H3LAB_URL=url, H3LAB_TOKEN=token, HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def h3lab(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "h3lab.client", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def make_token(user: Any, scope: str = "submit") -> str:
    return api_actions.do_create_token(
        user=user, name="cli", scope=scope, days=1, acting_user=user
    ).plaintext


def test_the_client_imports_neither_django_nor_torch() -> None:
    code = (
        "import sys, h3lab.client; "
        "heavy = ('django', 'torch', 'rest_framework'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_help_shows_examples() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "h3lab.client", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    assert "examples:" in out
    assert "watch 42" in out


def test_watch_exits_with_the_run_s_outcome(lab: Lab, live_server: Any, tmp_path: Path) -> None:
    env = client_env(live_server.url, make_token(lab.alice, "read"), tmp_path)
    for status, code in [
        (RunStatus.SUCCEEDED, 0),
        (RunStatus.FAILED, 1),
        (RunStatus.CANCELLED, 3),
    ]:
        run = factories.make_run(lab.project, status=status, step=20, error="boom")
        result = h3lab(env, "watch", str(run.pk))
        assert result.returncode == code, result.stderr
        assert f"run #{run.pk} {status}" in result.stderr


def test_errors_are_explained_with_distinct_exit_codes(
    lab: Lab, live_server: Any, tmp_path: Path
) -> None:
    env = client_env(live_server.url, make_token(lab.alice), tmp_path)
    theirs = factories.make_run(lab.other_project)

    bad_token = h3lab({**env, "H3LAB_TOKEN": "h3l_000000000000_nope"}, "runs")
    assert bad_token.returncode == 4
    assert "authentication failed: Invalid API token." in bad_token.stderr
    assert "/api/tokens/" in bad_token.stderr

    hidden = h3lab(env, "watch", str(theirs.pk))
    assert hidden.returncode == 5
    assert "not found" in hidden.stderr

    invalid = h3lab(env, "submit", "--project", "induction", "--steps", "0", "--lr", "-1")
    assert invalid.returncode == 6
    assert "config.train.steps" in invalid.stderr
    assert "config.train.lr" in invalid.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = h3lab({**env, "H3LAB_URL": f"http://127.0.0.1:{closed_port}"}, "runs")
    assert down.returncode == 7
    assert "cannot reach" in down.stderr


def test_the_config_file_supplies_url_and_token(lab: Lab, live_server: Any, tmp_path: Path) -> None:
    folder = tmp_path / ".config" / "h3lab"
    folder.mkdir(parents=True)
    token = make_token(lab.alice, "read")
    (folder / "config.json").write_text(f'{{"url": "{live_server.url}", "token": "{token}"}}')
    env = client_env("", "", tmp_path)
    del env["H3LAB_URL"], env["H3LAB_TOKEN"]
    run = factories.make_run(lab.project, name="from-file")
    result = h3lab(env, "runs")
    assert result.returncode == 0, result.stderr
    assert "from-file" in result.stdout
    assert str(run.pk) in result.stdout


@pytest.mark.e2e
def test_a_job_is_submitted_watched_and_fetched_from_the_terminal(
    lab: Lab,
    live_server: Any,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    start_worker()
    env = client_env(live_server.url, make_token(lab.alice), tmp_path)
    submitted = h3lab(
        env,
        "submit", "--project", "induction", "--experiment", "cli", "--name", "from the terminal",
        "--preset", "h3", "--task", "induction_head", "--vocab-size", "8", "--seq-len", "12",
        "--n-layer", "1", "--d-model", "16", "--steps", "20", "--batch-size", "8",
        "--device", "cpu", "--set", "train.eval_every=10", "--set", "train.checkpoint_every=10",
        "--set", "task.num_train=64", "--set", "task.num_test=16",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    run_id = int(submitted.stdout.strip())

    watched = h3lab(env, "watch", str(run_id), "--interval", "0.5", timeout=400)
    assert watched.returncode == 0, watched.stderr
    assert f"run #{run_id} succeeded" in watched.stderr
    assert "step 20/20" in watched.stderr

    logs = h3lab(env, "logs", str(run_id), "--follow", "--interval", "0.5")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.strip(), "the finished run's log is shown"
    assert f"run #{run_id} succeeded" in logs.stderr

    listed = h3lab(env, "artifacts", str(run_id))
    assert listed.returncode == 0, listed.stderr
    checkpoint = Artifact.objects.get(run_id=run_id, name="model.safetensors")
    assert str(checkpoint.pk) in listed.stdout
    target = tmp_path / "model.safetensors"
    downloaded = h3lab(env, "download", str(checkpoint.pk), "-o", str(target))
    assert downloaded.returncode == 0, downloaded.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == checkpoint.sha256
    assert "sha256 ok" in downloaded.stderr

    metrics = tmp_path / "metrics.csv"
    exported = h3lab(env, "metrics", str(run_id), "--csv", "-o", str(metrics))
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(metrics.open()))
    assert {"step", "train_loss", "test_accuracy"} <= set(rows[0])
    assert rows[-1]["step"] == "20"
    assert float(rows[-1]["train_loss"]) > 0

    runs = h3lab(env, "runs", "--project", "induction")
    assert f"{run_id}" in runs.stdout and "succeeded" in runs.stdout
    as_json = h3lab(env, "runs", "--project", "induction", "--json")
    assert [(r["id"], r["status"]) for r in json.loads(as_json.stdout)] == [(run_id, "succeeded")]

"""The terminal client's commands against a live server, in a subprocess, over HTTP: login and
logout, cancel, logs, rerun, the review round trip, exports download and verify, ``--json``,
the exit codes, and a ``watch`` that rides out a server answering 503 for a while (through a
small failure-injecting proxy in front of the live server)."""

from __future__ import annotations

import base64
import importlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from disclosure.actions.keys import do_revoke_signing_key
from disclosure.models import SigningKey
from experiments.models import Finding, Run, RunStatus, Tier
from experiments.storage import store_file
from tests import factories
from tests.conftest import Cast, Lab
from tests.publishing import promote
from tests.test_api_client import ROOT, client_env, make_token
from tests.test_publication import bundle_bytes, evidence_finding, export_now

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]


@pytest.fixture(autouse=True)
def _no_rate_limit(settings: Any) -> None:
    settings.H3LAB_API_RATES = {"token": None, "anon": None}


def run_client(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "h3lab.client", *args],
        cwd=ROOT,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- usage, version -------------------------------------------------------------------------------


def test_version_and_usage_errors_have_their_exit_codes(tmp_path: Path) -> None:
    env = client_env("http://127.0.0.1:9", "", tmp_path)
    version = run_client(env, "--version")
    assert version.returncode == 0 and version.stdout.startswith("h3lab-client ")
    assert run_client(env, "watch").returncode == 2  # RUN missing
    assert run_client(env, "watch", "not-a-number").returncode == 2
    assert run_client(env, "frobnicate").returncode == 2
    helped = run_client(env, "--help")
    assert "exit codes:" in helped.stdout and "3  the run was cancelled" in helped.stdout


# --- login ----------------------------------------------------------------------------------------


def test_login_stores_the_token_0600_and_later_commands_use_it(
    lab: Lab, live_server: Any, tmp_path: Path
) -> None:
    env = client_env("", "", tmp_path)
    del env["H3LAB_URL"], env["H3LAB_TOKEN"]
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    config = tmp_path / "xdg" / "h3lab" / "config.json"
    token = make_token(lab.alice, "read")

    refused = run_client(
        env, "login", "--url", live_server.url, "--with-token", stdin="h3l_000000000000_no\n"
    )
    assert refused.returncode == 4, refused.stderr
    assert not config.exists()  # a token that does not work is not stored

    done = run_client(env, "login", "--url", live_server.url, "--with-token", stdin=token + "\n")
    assert done.returncode == 0, done.stderr
    assert f"Logged in to {live_server.url} as alice (token scope read" in done.stderr
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o700
    assert json.loads(config.read_text()) == {"url": live_server.url, "token": token}

    run = factories.make_run(lab.project, name="seen-through-login")
    listed = run_client(env, "runs", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [r["id"] for r in json.loads(listed.stdout)] == [run.pk]
    # the environment still wins over the stored token
    overridden = run_client({**env, "H3LAB_TOKEN": "h3l_000000000000_no"}, "runs")
    assert overridden.returncode == 4

    out = run_client(env, "logout")
    assert out.returncode == 0 and "revoke it at" in out.stderr
    assert json.loads(config.read_text()) == {"url": live_server.url}
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    after = run_client(env, "runs")
    assert after.returncode == 4 and "run `login`" in after.stderr
    assert run_client(env, "logout").returncode == 1  # not logged in


def test_login_asks_for_the_url_and_the_token_in_a_terminal(
    lab: Lab, live_server: Any, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    from h3lab import client

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    token = make_token(lab.alice, "submit")
    for name in ("H3LAB_URL", "H3LAB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(sys, "stdin", Terminal(f"{live_server.url}/\n"))
    asked: list[str] = []

    def getpass(prompt: str) -> str:
        asked.append(prompt)
        return token

    monkeypatch.setattr("getpass.getpass", getpass)
    assert client.main(["login"]) == 0
    err = capsys.readouterr().err
    assert "Lab URL [http://127.0.0.1:8000]: " in err
    assert f"Create a token at {live_server.url}/api/tokens/" in err
    assert asked == ["Token: "]
    stored = json.loads((tmp_path / "xdg" / "h3lab" / "config.json").read_text())
    assert stored == {"url": live_server.url, "token": token}


# --- runs: cancel, logs, rerun --------------------------------------------------------------------


def test_cancel_and_watch_exits_3_for_a_cancelled_run(
    lab: Lab, live_server: Any, tmp_path: Path
) -> None:
    env = client_env(live_server.url, make_token(lab.alice), tmp_path)
    run = factories.make_run(lab.project, status=RunStatus.QUEUED)
    cancelled = run_client(env, "cancel", str(run.pk), "--json")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["cancelled"] is True
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED
    again = run_client(env, "cancel", str(run.pk))
    assert again.returncode == 0 and "nothing to cancel" in again.stderr
    watched = run_client(env, "watch", str(run.pk), "--json")
    assert watched.returncode == 3
    assert json.loads(watched.stdout)["status"] == "cancelled"
    theirs = factories.make_run(lab.other_project, status=RunStatus.QUEUED)
    assert run_client(env, "cancel", str(theirs.pk)).returncode == 5
    assert Run.objects.get(pk=theirs.pk).status == RunStatus.QUEUED


def _with_log(run: Run, tmp_path: Path, lines: list[str]) -> None:
    src = tmp_path / f"train-{run.pk}.log"
    src.write_text("".join(f"{line}\n" for line in lines))
    store_file(run, src, "train.log").save()


def test_logs_print_the_tail_and_follow_ends_with_the_run_s_outcome(
    lab: Lab, live_server: Any, tmp_path: Path
) -> None:
    env = client_env(live_server.url, make_token(lab.alice, "read"), tmp_path)
    ok = factories.make_run(lab.project, status=RunStatus.SUCCEEDED, step=20)
    _with_log(ok, tmp_path, [f"step {i} loss {1 / (i + 1):.3f}" for i in range(0, 25, 5)])
    tail = run_client(env, "logs", str(ok.pk), "--tail", "2")
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.splitlines() == ["step 15 loss 0.062", "step 20 loss 0.048"]
    followed = run_client(env, "logs", str(ok.pk), "--follow")
    assert followed.returncode == 0
    assert followed.stdout.splitlines()[0] == "step 0 loss 1.000"
    assert f"run #{ok.pk} succeeded" in followed.stderr
    as_json = json.loads(run_client(env, "logs", str(ok.pk), "--json").stdout)
    assert as_json["lines"][-1] == "step 20 loss 0.048" and as_json["status"] == "succeeded"

    failed = factories.make_run(lab.project, status=RunStatus.FAILED, error="CUDA out of memory")
    _with_log(failed, tmp_path, ["step 0 loss 2.0"])
    crashed = run_client(env, "logs", str(failed.pk), "-f")
    assert crashed.returncode == 1
    assert "error: CUDA out of memory" in crashed.stderr


def test_new_lines_prints_each_line_of_a_moving_tail_once() -> None:
    from h3lab.client import new_lines

    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b"], ["a", "b", "c"]) == ["c"]
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]  # the tail moved on
    assert new_lines(["a", "b"], ["x", "y"]) == ["x", "y"]  # nothing in common: all new


def test_rerun_submits_the_run_again_with_overrides(
    lab: Lab, live_server: Any, tmp_path: Path
) -> None:
    env = client_env(live_server.url, make_token(lab.alice), tmp_path)
    source = factories.make_run(lab.project, status=RunStatus.SUCCEEDED, name="base")
    done = run_client(env, "rerun", str(source.pk), "--set", "train.lr=0.003", "--json")
    assert done.returncode == 0, done.stderr
    new = Run.objects.get(pk=json.loads(done.stdout)["id"])
    assert new.pk != source.pk and new.rerun_of_id == source.pk
    assert new.config["train"]["lr"] == 0.003
    assert new.config["task"] == source.config["task"]
    plain = run_client(env, "rerun", str(source.pk), "--name", "third")
    assert plain.returncode == 0 and plain.stdout.strip().isdigit()
    assert Run.objects.get(pk=int(plain.stdout)).name == "third"


# --- a watch that survives a flaky server ---------------------------------------------------------


class FlakyProxy:
    """Forwards every request to ``target``, except that it answers the first ``failures``
    requests under ``/api/v1/runs/`` with 503 (as a restarting server or its proxy would)."""

    def __init__(self, target: str, failures: int) -> None:
        self.target = target.rstrip("/")
        self.failures = failures
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/api/v1/runs/") and proxy.refused < proxy.failures:
                    proxy.refused += 1
                    body = b'{"error": {"code": "unavailable", "message": "restarting"}}'
                    self.send_response(503)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                request = urllib.request.Request(proxy.target + self.path, headers=headers)  # noqa: S310
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
                        status, ctype, body = (
                            answer.status,
                            answer.headers["Content-Type"],
                            answer.read(),
                        )
                except urllib.error.HTTPError as exc:
                    status, ctype, body = exc.code, exc.headers["Content-Type"], exc.read()
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def flaky(live_server: Any) -> Iterator[Any]:
    proxies: list[FlakyProxy] = []

    def make(failures: int) -> FlakyProxy:
        proxies.append(FlakyProxy(live_server.url, failures))
        return proxies[-1]

    yield make
    for p in proxies:
        p.server.shutdown()


def test_watch_survives_a_server_that_answers_503_a_few_times(
    lab: Lab, flaky: Any, tmp_path: Path
) -> None:
    run = factories.make_run(lab.project, status=RunStatus.SUCCEEDED, step=20)
    proxy = flaky(3)
    env = client_env(proxy.url, make_token(lab.alice, "read"), tmp_path)
    watched = run_client(env, "watch", str(run.pk), "--retry-delay", "0.05")
    assert watched.returncode == 0, watched.stderr
    assert proxy.refused == 3
    assert watched.stderr.count("server answered 503; retrying in") == 3
    assert "retry 3 of 8" in watched.stderr
    assert f"run #{run.pk} succeeded" in watched.stderr


def test_watch_gives_up_after_its_bound(lab: Lab, flaky: Any, tmp_path: Path) -> None:
    run = factories.make_run(lab.project, status=RunStatus.RUNNING, step=5)
    proxy = flaky(1000)
    env = client_env(proxy.url, make_token(lab.alice, "read"), tmp_path)
    watched = run_client(env, "watch", str(run.pk), "--retries", "2", "--retry-delay", "0.05")
    assert watched.returncode == 8
    assert proxy.refused == 3  # the first try and two retries
    assert "server answered 503: restarting (gave up after 2 retries)" in watched.stderr


# --- the review round trip ------------------------------------------------------------------------


@pytest.fixture
def policy_v1(db: None) -> None:
    """Release policy v1 and the role groups, as migration disclosure.0003 seeds them: a test
    with a live server runs in a flushed database, which the migration's rows do not survive."""
    from django.apps import apps

    importlib.import_module("disclosure.migrations.0003_roles_and_policy_v1").forward(apps, None)


def test_a_finding_goes_through_review_from_the_terminal(
    policy_v1: None, cast: Cast, live_server: Any, tmp_path: Path
) -> None:
    lab = cast.lab
    run = factories.make_run(lab.project, status=RunStatus.SUCCEEDED, user=lab.alice)
    factories.add_metrics(run, "test_accuracy", [0.4, 0.97])
    recorder = APIClient()
    recorder.credentials(HTTP_AUTHORIZATION=f"Bearer {make_token(lab.alice)}")
    recorded = recorder.post(
        "/api/v1/findings/",
        {"title": "Induction heads at step 400", "body": "text", "runs": [run.pk],
         "metrics": ["test_accuracy"]},
        format="json",
    )  # fmt: skip
    assert recorded.status_code == 201, recorded.content
    finding = recorded.json()["id"]
    alice = client_env(live_server.url, make_token(lab.alice, "manage"), tmp_path)
    rita = client_env(live_server.url, make_token(cast.rita, "manage"), tmp_path)

    asked = run_client(alice, "findings", "request-review", str(finding), "-m", "please")
    assert asked.returncode == 0, asked.stderr
    assert Finding.objects.get(pk=finding).tier == Tier.REVIEW
    assessed = run_client(
        rita, "findings", "assess", str(finding), "--uplift", "0", "--alignment", "2",
        "-m", "explains a mechanism", "--category", "interpretability",
    )  # fmt: skip
    assert assessed.returncode == 0, assessed.stderr
    onward = run_client(alice, "findings", "request-release", str(finding), "--json")
    assert onward.returncode == 0, onward.stderr
    assert json.loads(onward.stdout)["target_tier"] == Tier.PARTNERS
    bare = run_client(rita, "findings", "vote", str(finding), "object")
    assert bare.returncode == 6 and "rationale" in bare.stderr  # an objection needs one
    objected = run_client(
        rita, "findings", "vote", str(finding), "object", "-m", "too early", "--json"
    )
    assert objected.returncode == 0, objected.stderr
    objection = json.loads(objected.stdout)["id"]
    shown_objection = run_client(alice, "objections", "show", str(objection))
    assert "(open)" in shown_objection.stdout and "0 of 1 needed" in shown_objection.stdout
    # its author does not clear it, and the team may not either
    assert run_client(rita, "objections", "clear", str(objection), "-m", "x").returncode == 5
    assert run_client(alice, "objections", "withdraw", str(objection)).returncode == 5

    shown = run_client(alice, "findings", "show", str(finding), "--json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["tier_label"] == "review"
    assert [a["reviewer"] for a in body["assessments"]] == ["rita"]
    (pending,) = [r for r in body["release_requests"] if r["state"] == "open"]
    assert [(v["reviewer"], v["kind"]) for v in pending["votes"]] == [("rita", "object")]
    text = run_client(alice, "findings", "show", str(finding))
    assert "Induction heads at step 400" in text.stdout
    assert "test_accuracy = 0.97 @ step" in text.stdout
    assert "rita object" in text.stdout and "waiting:" in text.stdout
    ravi = client_env(
        live_server.url, make_token(factories.make_reviewer("ravi"), "manage"), tmp_path
    )
    cleared = run_client(ravi, "objections", "clear", str(objection), "-m", "addressed")
    assert cleared.returncode == 0, cleared.stderr
    assert f"objection #{objection} cleared" in cleared.stderr
    who = json.loads(run_client(ravi, "whoami", "--json").stdout)
    assert (who["username"], who["reviewer"], who["url"]) == ("ravi", True, live_server.url)
    listed = run_client(alice, "findings", "list", "--tier", "1", "--json")
    assert [f["id"] for f in json.loads(listed.stdout)] == [finding]
    # an outsider: not found, the same as a missing finding
    outsider = client_env(live_server.url, make_token(lab.charlie, "read"), tmp_path)
    assert run_client(outsider, "findings", "show", str(finding)).returncode == 5


# --- exports: download and verify -----------------------------------------------------------------


@pytest.fixture
def master_key(settings: Any) -> None:
    settings.H3LAB_MASTER_KEYS = "mk:" + base64.b64encode(os.urandom(32)).decode()


def _unpack(data: bytes, into: Path) -> Path:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    (folder,) = list(into.iterdir())
    return folder


def test_a_bundle_is_downloaded_and_verified_and_tampering_is_named(
    policy_v1: None, cast: Cast, live_server: Any, tmp_path: Path, master_key: None
) -> None:
    public = promote(cast, evidence_finding(cast, tmp_path))
    export = export_now(cast, [public])
    env = client_env(live_server.url, make_token(cast.mara, "read"), tmp_path)
    listed = run_client(env, "exports", "--json")
    assert [e["id"] for e in json.loads(listed.stdout)] == [export.pk]

    target = tmp_path / "bundle.tar.gz"
    got = run_client(env, "exports", "download", str(export.pk), "-o", str(target), "--verify")
    assert got.returncode == 0, got.stderr
    assert target.read_bytes() == bundle_bytes(export)
    assert got.stdout.startswith(f"OK: {export.name}: signatures by key {export.signing_key_id}")
    assert "(cryptography)" in got.stdout and "nothing else is in the bundle" in got.stdout

    if shutil.which("openssl"):
        forced = run_client(env, "exports", "verify", str(target), "--openssl", "--json")
        assert forced.returncode == 0, forced.stderr
        assert json.loads(forced.stdout)["checked_with"] == "openssl"

    folder = _unpack(target.read_bytes(), tmp_path / "unpacked")
    assert run_client(env, "exports", "verify", str(folder)).returncode == 0
    probe = next(folder.glob("findings/*.md"))
    probe.write_text(probe.read_text() + "\nAn added claim.\n")
    (folder / "extra.txt").write_text("not signed")
    tampered = run_client(env, "exports", "verify", str(folder))
    assert tampered.returncode == 1
    rel = probe.relative_to(folder).as_posix()
    assert f"{rel}: does not match SHA256SUMS" in tampered.stderr
    assert "extra.txt: not listed in SHA256SUMS" in tampered.stderr
    if shutil.which("openssl"):
        assert run_client(env, "exports", "verify", str(folder), "--openssl").returncode == 1

    signature = _unpack(target.read_bytes(), tmp_path / "resigned")
    sums = signature / "SHA256SUMS"
    sums.write_text(sums.read_text().replace(" ", "  ", 1))
    bad_sig = run_client(env, "exports", "verify", str(signature))
    assert bad_sig.returncode == 1 and "SHA256SUMS: signature does not verify" in bad_sig.stderr

    key = SigningKey.objects.get(key_id=export.signing_key_id)
    pem = tmp_path / "key.pem"
    pem.write_text(key.public_key_pem)
    do_revoke_signing_key(key, reason="leaked", acting_user=None)
    revoked = run_client(env, "exports", "verify", str(target))
    assert revoked.returncode == 1 and "is revoked: do not trust it" in revoked.stderr
    # with the key given explicitly, the reader decides whom to trust
    assert run_client(env, "exports", "verify", str(target), "--key", str(pem)).returncode == 0

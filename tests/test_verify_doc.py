"""docs/verify.md's shell steps, run as written (only ``BUNDLE`` and ``LAB`` set), pass on a
genuine bundle and fail on a tampered one: a changed file, an added file, a changed signed
list, a revoked key. The lab's key endpoints are served over HTTP from what the site answers."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from disclosure.actions.keys import do_revoke_signing_key
from disclosure.models import Export, SigningKey
from tests.conftest import Cast
from tests.publishing import promote
from tests.test_publication import bundle_bytes, evidence_finding, export_now

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("openssl", "sha256sum", "curl", "bash")),
        reason="needs openssl, sha256sum, curl and bash",
    ),
]

DOC = Path(__file__).resolve().parents[1] / "docs" / "verify.md"


@pytest.fixture(autouse=True)
def master_key(settings: Any) -> None:
    settings.H3LAB_MASTER_KEYS = "mk:" + base64.b64encode(os.urandom(32)).decode()


def documented_script() -> str:
    """The ```sh blocks of steps 1-3, in order, as one script."""
    text = DOC.read_text()
    body = text[text.index("## 1.") : text.index("## With h3lab installed")]
    blocks = re.findall(r"```sh\n(.*?)```", body, flags=re.S)
    assert len(blocks) == 3, "docs/verify.md should have one shell block per step"
    return "".join(blocks)


class Site:
    """What the lab's site serves at /keys/<id>.pem and /.well-known/h3lab-keys.json, over HTTP."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = partial(_QuietHandler, directory=str(root))
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def publish(self, export: Export) -> None:
        client = Client()
        (self.root / "keys").mkdir(exist_ok=True)
        (self.root / ".well-known").mkdir(exist_ok=True)
        pem = client.get(reverse("key-pem", args=[export.signing_key_id])).content
        (self.root / "keys" / f"{export.signing_key_id}.pem").write_bytes(pem)
        listing = client.get(reverse("keys-json")).content
        (self.root / ".well-known" / "h3lab-keys.json").write_bytes(listing)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    root = tmp_path / "site"
    root.mkdir()
    s = Site(root)
    yield s
    s.server.shutdown()


def run_documented_steps(
    workdir: Path, export: Export, lab_url: str
) -> subprocess.CompletedProcess[str]:
    script = documented_script()
    script = re.sub(r"^BUNDLE=\S+", f"BUNDLE={export.name}", script, count=1, flags=re.M)
    script = re.sub(r"^LAB=\S+", f"LAB={lab_url}", script, count=1, flags=re.M)
    return subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=workdir, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def tamper_then_repack(workdir: Path, export: Export, change: Callable[[Path], None]) -> None:
    """Unpack the archive, apply ``change`` to its folder, pack it again under the same name."""
    archive = workdir / f"{export.name}.tar.gz"
    with tarfile.open(archive) as tar:
        tar.extractall(workdir / "unpacked", filter="data")
    change(workdir / "unpacked" / export.name)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(workdir / "unpacked" / export.name, arcname=export.name)
    shutil.rmtree(workdir / "unpacked")


@pytest.fixture
def exported(cast: Cast, tmp_path: Path, site: Site) -> tuple[Export, Path]:
    finding = promote(cast, evidence_finding(cast, tmp_path))
    export = export_now(cast, [finding])
    site.publish(export)
    workdir = tmp_path / "downloads"
    workdir.mkdir()
    (workdir / f"{export.name}.tar.gz").write_bytes(bundle_bytes(export))
    return export, workdir


def test_the_documented_steps_pass_on_a_genuine_bundle(
    exported: tuple[Export, Path], site: Site
) -> None:
    export, workdir = exported
    done = run_documented_steps(workdir, export, site.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("Signature Verified Successfully") == 2
    assert ": OK\n" in done.stdout and "FAILED" not in done.stdout
    assert "no extra files" in done.stdout
    assert '"status": "current"' in done.stdout


def _first_evidence_file(folder: Path) -> Path:
    return next(p for p in sorted((folder / "evidence").rglob("*")) if p.is_file())


@pytest.mark.parametrize(
    ("change", "symptom"),
    [
        (lambda f: _first_evidence_file(f).write_bytes(b"changed"), "FAILED"),
        (lambda f: (f / "evidence" / "extra.txt").write_text("added"), "extra.txt"),
        (
            lambda f: (f / "SHA256SUMS").write_text((f / "SHA256SUMS").read_text() + "\n"),
            "Signature Verification Failure",
        ),
    ],
    ids=["changed-file", "added-file", "changed-sums"],
)
def test_the_documented_steps_fail_on_a_tampered_bundle(
    exported: tuple[Export, Path], site: Site, change: Callable[[Path], None], symptom: str
) -> None:
    export, workdir = exported
    tamper_then_repack(workdir, export, change)
    done = run_documented_steps(workdir, export, site.url)
    assert done.returncode != 0
    assert symptom in done.stdout + done.stderr


def test_the_documented_steps_refuse_a_revoked_key(
    cast: Cast, exported: tuple[Export, Path], site: Site
) -> None:
    export, workdir = exported
    key = SigningKey.objects.get(key_id=export.signing_key_id)
    do_revoke_signing_key(key, reason="leaked", acting_user=cast.mara)
    site.publish(export)
    done = run_documented_steps(workdir, export, site.url)
    assert done.returncode != 0
    assert "Signature Verified" not in done.stdout  # it stops at the key's status

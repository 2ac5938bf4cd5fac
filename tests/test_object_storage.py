"""Artifacts and export bundles in an S3-compatible bucket (``H3LAB_STORAGE=s3``), over HTTP.

The endpoint is moto's server mode (``python -m moto.server``, from ``moto[server]`` in
requirements-dev.txt): a real S3 HTTP API on a free local port, started per module; boto3 and
django-storages talk to it exactly as to AWS or MinIO. Nothing is patched in-process.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import os
import subprocess
import sys
import time
import tracemalloc
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

pytest.importorskip("moto.server", reason="moto[server] (requirements-dev.txt) is not installed")
pytest.importorskip("storages.backends.s3", reason="django-storages[s3] is not installed")

import boto3  # type: ignore[import-untyped,import-not-found,unused-ignore]

from disclosure.models import ExportKind
from experiments.storage import artifact_root, open_artifact, store_file
from h3lab.settings import stored_file_backends
from tests import factories
from tests.conftest import Cast, Lab, login
from tests.servers import free_port
from vault import crypto

MIB = 1 << 20


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/", timeout=1).close()  # noqa: S310  # http://127.0.0.1
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def s3_env(s3_endpoint: str) -> dict[str, str]:
    """The environment of a web or worker process using a fresh bucket on the endpoint."""
    env = {
        "H3LAB_STORAGE": "s3",
        "AWS_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_STORAGE_BUCKET_NAME": f"h3lab-{uuid.uuid4().hex[:12]}",
        "AWS_ACCESS_KEY_ID": "h3lab-test",
        "AWS_SECRET_ACCESS_KEY": "h3lab-test-secret",
        "AWS_S3_REGION_NAME": "us-east-1",
        "H3LAB_S3_PART_MB": "5",  # S3's smallest part: a 32 MiB file is a multipart upload
        "H3LAB_S3_CONCURRENCY": "1",
    }
    bucket(env).create()
    return env


@pytest.fixture
def on_s3(settings: Any, s3_env: dict[str, str]) -> dict[str, str]:
    """This (web) process stores artifacts and bundles in the bucket."""
    settings.STORAGES = {**settings.STORAGES, **stored_file_backends(s3_env)}
    settings.H3LAB_MASTER_KEYS = "mk:" + base64.b64encode(os.urandom(32)).decode()
    return s3_env


def bucket(env: dict[str, str]) -> Any:
    s3 = boto3.resource(
        "s3",
        endpoint_url=env["AWS_S3_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_S3_REGION_NAME"],
    )
    return s3.Bucket(env["AWS_STORAGE_BUCKET_NAME"])


def object_bytes(env: dict[str, str], key: str) -> bytes:
    return bytes(bucket(env).Object(key).get()["Body"].read())


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


SECRET = b"layer 1 head 3 copies the token after the previous match. " * 500


def test_an_artifact_is_ciphertext_in_the_bucket_and_downloads_intact(
    lab: Lab, on_s3: dict[str, str], tmp_path: Path
) -> None:
    run = factories.make_run(lab.project, user=lab.alice)
    src = tmp_path / "probe.bin"
    src.write_bytes(SECRET)
    artifact = store_file(run, src, "probe.bin")
    artifact.save()

    at_rest = object_bytes(on_s3, f"artifacts/{artifact.path}")
    assert at_rest.startswith(crypto.MAGIC)
    assert SECRET[:64] not in at_rest
    assert files_under(artifact_root()) == [], "nothing is written to the data folder"
    response = login(lab.alice).get(reverse("artifact-download", args=[artifact.pk]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == SECRET  # type: ignore[attr-defined]
    assert response["X-Checksum-SHA256"] == hashlib.sha256(SECRET).hexdigest()
    assert (
        login(lab.charlie).get(reverse("artifact-download", args=[artifact.pk])).status_code == 404
    )


def test_a_32_mib_artifact_goes_up_and_down_in_bounded_memory(
    lab: Lab, on_s3: dict[str, str], tmp_path: Path
) -> None:
    run = factories.make_run(lab.project, user=lab.alice)
    src = tmp_path / "model.safetensors"
    h = hashlib.sha256()
    with src.open("wb") as f:
        for _ in range(32):
            block = os.urandom(MIB)
            h.update(block)
            f.write(block)
    del block

    def peak_of(step: Any) -> tuple[Any, int]:
        """``step()``'s result and the most memory it held at once (all threads)."""
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            result = step()
            return result, tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()

    def download() -> tuple[int, str]:
        got, size = hashlib.sha256(), 0
        for chunk in open_artifact(artifact):
            got.update(chunk)
            size += len(chunk)
        return size, got.hexdigest()

    # Set the S3 clients up first (this thread's for GETs, the saver thread's for PUTs): a
    # one-off cost of the process, not of a file.
    small = tmp_path / "small.bin"
    small.write_bytes(b"warm-up")
    b"".join(open_artifact(store_file(run, small, "small.bin")))
    artifact, up_peak = peak_of(lambda: store_file(run, src, "model.safetensors"))
    artifact.save()
    (size, digest), down_peak = peak_of(download)

    assert (size, digest) == (32 * MIB, h.hexdigest())
    assert artifact.sha256 == h.hexdigest()
    stored = bucket(on_s3).Object(f"artifacts/{artifact.path}")
    assert stored.content_length == crypto.encrypted_size(32 * MIB)
    # Multipart upload of 5 MiB parts, one in flight and one read ahead, and a chunked GET
    # of 1 MiB chunks: memory is a few parts or chunks, not the file (the same at 64 MiB).
    # Measured: 17.3 MiB up, 7.0 MiB down.
    assert up_peak < 4 * 5 * MIB + 4 * MIB, f"upload peak {up_peak / MIB:.1f} MiB"
    assert down_peak < 10 * MIB, f"download peak {down_peak / MIB:.1f} MiB"


def test_a_partner_copy_is_built_into_the_bucket_encrypted_and_downloads_through_the_web(
    cast: Cast, on_s3: dict[str, str], tmp_path: Path
) -> None:
    from tests.test_publication_partner import World, partner_copy

    world = World(cast, tmp_path)
    export = partner_copy(cast, cast.carol)

    assert export.kind == ExportKind.PARTNER
    at_rest = object_bytes(on_s3, f"exports/{export.path}")
    assert at_rest.startswith(crypto.MAGIC), "partner copies are ciphertext in the bucket"
    assert hashlib.sha256(at_rest).hexdigest() != export.sha256
    url = reverse("export-download", args=[export.pk])
    response = login(cast.carol).get(url)
    assert response.status_code == 200
    blob = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert blob.startswith(b"\x1f\x8b")
    assert hashlib.sha256(blob).hexdigest() == export.sha256
    assert login(world.dora).get(url).status_code == 404


def test_backup_refuses_and_names_the_bucket_s_own_tools(
    on_s3: dict[str, str], tmp_path: Path
) -> None:
    from web.backup import BackupError, create_backup, restore_backup

    (tmp_path / "old.tar").write_bytes(b"an archive from elsewhere")
    for attempt in (
        lambda: create_backup(tmp_path / "b.tar", say=print),
        lambda: restore_backup(tmp_path / "old.tar", say=print),
    ):
        with pytest.raises(BackupError, match="back up the bucket with its own tools"):
            attempt()
    assert not (tmp_path / "b.tar").exists()


def test_readyz_checks_the_bucket(client: Any, settings: Any, on_s3: dict[str, str]) -> None:
    settings.H3LAB_READY_TIMEOUT_S = 30  # a first S3 client takes seconds on a loaded machine
    assert client.get("/readyz").json()["checks"]["storage"]["ok"] is True
    missing = {**on_s3, "AWS_STORAGE_BUCKET_NAME": "h3lab-no-such-bucket"}
    settings.STORAGES = {**settings.STORAGES, **stored_file_backends(missing)}
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"]["ok"] is False


def test_declassifying_stores_a_clear_copy_in_the_bucket_and_shredding_deletes_it(
    lab: Lab, on_s3: dict[str, str], tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    from experiments.storage import declassify, shred

    run = factories.make_run(lab.project, user=lab.alice)
    src = tmp_path / "probe.bin"
    src.write_bytes(SECRET)
    artifact = store_file(run, src, "probe.bin")
    artifact.save()
    encrypted_key = f"artifacts/{artifact.path}"

    with django_capture_on_commit_callbacks(execute=True):
        assert declassify(artifact) is True
    artifact.refresh_from_db()
    keys = {o.key for o in bucket(on_s3).objects.all()}
    assert keys == {f"artifacts/{artifact.path}"} != {encrypted_key}
    assert object_bytes(on_s3, f"artifacts/{artifact.path}") == SECRET
    assert b"".join(open_artifact(artifact)) == SECRET

    with django_capture_on_commit_callbacks(execute=True):
        shred(artifact)
    assert list(bucket(on_s3).objects.all()) == []

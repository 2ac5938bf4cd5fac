"""Restricted artifacts are ciphertext on disk; only the permission-checked download produces
plaintext, in memory. Wrong keys, tampering, rotation, crypto-shredding and public release."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from disclosure.actions.retraction import do_retract_finding
from disclosure.models import AuditEntry
from experiments.actions.runs import do_submit_run
from experiments.models import Artifact, Tier
from experiments.storage import ArtifactUnavailable, artifact_root, open_artifact, store_file
from h3lab import checks, jobs
from tests import factories
from tests.conftest import Cast, Lab, login
from tests.publishing import promote
from vault import crypto, keystore

SECRET = b"induction-head weights: layer 1 head 3 copies the token after the match. " * 40


def master(key_id: str) -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


@pytest.fixture
def keys(settings: object) -> Iterator[dict[str, str]]:
    """A private keyring for the test: {"old": spec, "new": spec}; "old" is configured."""
    ring = {"old": master("mk-old"), "new": master("mk-new")}
    settings.H3LAB_MASTER_KEYS = ring["old"]  # type: ignore[attr-defined]
    yield ring


def stored(lab: Lab, tmp_path: Path, data: bytes = SECRET, name: str = "probe.bin") -> Artifact:
    run = factories.make_run(lab.project, user=lab.alice)
    src = tmp_path / "src" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    artifact = store_file(run, src, name)
    artifact.save()
    src.unlink()  # the worker's copy (execute_run removes its workdir)
    return artifact


def on_disk(artifact: Artifact) -> bytes:
    return (artifact_root() / artifact.path).read_bytes()


def probes(data: bytes) -> list[bytes]:
    """Distinctive 48-byte windows of a plaintext: finding any of them in a file means the
    plaintext (or a large part of it) is there."""
    if len(data) <= 48:
        return [data]
    step = max(1, (len(data) - 48) // 8)
    return [data[i : i + 48] for i in range(0, len(data) - 48, step)][:9]


def scan(roots: list[Path], needles: list[bytes]) -> list[str]:
    found = []
    for root in roots:
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    blob = path.read_bytes()
                except OSError:
                    continue
                found += [f"{path}" for n in needles if n in blob][:1]
    return found


@pytest.mark.django_db
def test_a_stored_artifact_is_ciphertext_and_downloads_as_the_exact_plaintext(
    keys: dict[str, str], lab: Lab, tmp_path: Path
) -> None:
    artifact = stored(lab, tmp_path)
    blob = on_disk(artifact)
    assert artifact.encrypted is True and artifact.key_id == "mk-old"
    assert blob.startswith(crypto.MAGIC) and SECRET[:40] not in blob
    assert (artifact.size, artifact.sha256) == (len(SECRET), hashlib.sha256(SECRET).hexdigest())
    assert len(blob) == crypto.encrypted_size(len(SECRET))
    response = login(lab.alice).get(reverse("artifact-download", args=[artifact.pk]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == SECRET  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_no_plaintext_of_restricted_artifacts_is_left_on_disk_after_training_and_download(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every temporary file any code makes during the test lands where the scan looks.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    run = do_submit_run(
        project=lab.project,
        cfg=factories.tiny_config(device="cpu"),
        experiment_name="at-rest",
        enqueue=False,
        acting_user=lab.alice,
    )
    assert jobs.execute_run(run.pk) == "succeeded"
    artifacts = list(Artifact.objects.filter(run=run))
    assert {"model.safetensors", "train.log"} <= {a.name for a in artifacts}
    # config.json is the run's config, which the database holds by design (Run.config).
    plaintexts = {a.name: b"".join(open_artifact(a)) for a in artifacts if a.name != "config.json"}
    client = login(lab.alice)
    for a in artifacts:
        assert a.encrypted is True
        response = client.get(reverse("artifact-download", args=[a.pk]))
        assert response.status_code == 200
        body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
        assert hashlib.sha256(body).hexdigest() == a.sha256
    roots = [Path(settings.MEDIA_ROOT), Path(settings.VAR_DIR), scratch]
    assert scan(roots, probes(on_disk(artifacts[0])))  # the scan does find what is on disk
    for name, plain in plaintexts.items():
        assert scan(roots, probes(plain)) == [], f"plaintext of {name} found on disk"
    assert not Path(settings.RUNS_DIR, str(run.pk)).exists()  # the workdir is gone


@pytest.mark.django_db
def test_a_wrong_or_missing_master_key_gives_a_clear_page_not_garbage(
    keys: dict[str, str], lab: Lab, tmp_path: Path, settings: object
) -> None:
    artifact = stored(lab, tmp_path)
    url = reverse("artifact-download", args=[artifact.pk])
    settings.H3LAB_MASTER_KEYS = "mk-old:" + base64.b64encode(os.urandom(32)).decode()  # type: ignore[attr-defined]
    response = login(lab.alice).get(url)
    assert response.status_code == 503
    assert b"cannot decrypt" in response.content and SECRET[:20] not in response.content
    settings.H3LAB_MASTER_KEYS = keys["new"]  # type: ignore[attr-defined]  # mk-old not configured
    with pytest.raises(ArtifactUnavailable, match="'mk-old' is not configured"):
        open_artifact(artifact)
    assert login(lab.alice).get(url).status_code == 503


@pytest.mark.django_db
def test_a_wrapped_key_moved_to_another_artifact_does_not_unwrap(
    keys: dict[str, str], lab: Lab, tmp_path: Path
) -> None:
    a = stored(lab, tmp_path, name="a.bin")
    b = stored(lab, tmp_path, b"other bytes " * 100, name="b.bin")
    Artifact.objects.filter(pk=b.pk).update(wrapped_key=a.wrapped_key)
    b.refresh_from_db()
    with pytest.raises(ArtifactUnavailable) as err:
        open_artifact(b)
    assert err.value.reason == "key"


@pytest.mark.django_db
def test_truncated_reordered_or_modified_files_are_rejected_by_storage(
    keys: dict[str, str], lab: Lab, tmp_path: Path
) -> None:
    data = os.urandom(3 * crypto.DEFAULT_CHUNK + 100)
    artifact = stored(lab, tmp_path, data)
    path = artifact_root() / artifact.path
    blob = path.read_bytes()
    h, step = crypto.HEADER.size, crypto.DEFAULT_CHUNK + crypto.TAG
    chunks = [blob[h + i * step : h + (i + 1) * step] for i in range(4)]
    variants = {
        "truncated at a chunk boundary": blob[: h + 3 * step],
        "truncated mid-chunk": blob[:-7],
        "chunks 1 and 2 swapped": blob[:h] + chunks[0] + chunks[2] + chunks[1] + chunks[3],
        "first chunks swapped": blob[:h] + chunks[1] + chunks[0] + chunks[2] + chunks[3],
        "one byte flipped": blob[:-50] + bytes([blob[-50] ^ 1]) + blob[-49:],
    }
    for what, bad in variants.items():
        path.write_bytes(bad)
        with pytest.raises(ArtifactUnavailable) as err:
            b"".join(open_artifact(artifact))
        assert err.value.reason == "corrupt", what
    path.write_bytes(blob)
    assert b"".join(open_artifact(artifact)) == data


@pytest.mark.django_db
def test_master_key_rotation_rewraps_without_reencrypting(
    keys: dict[str, str], lab: Lab, tmp_path: Path, settings: object
) -> None:
    artifact = stored(lab, tmp_path)
    before = on_disk(artifact)
    settings.H3LAB_MASTER_KEYS = f"{keys['new']},{keys['old']}"  # type: ignore[attr-defined]
    call_command("rotate_master_key", stdout=open(os.devnull, "w"))  # noqa: SIM115
    artifact.refresh_from_db()
    assert artifact.key_id == "mk-new"
    assert on_disk(artifact) == before  # data untouched
    settings.H3LAB_MASTER_KEYS = keys["new"]  # type: ignore[attr-defined]  # old key removed
    assert b"".join(open_artifact(artifact)) == SECRET
    assert AuditEntry.objects.filter(action="masterkey.rotate").count() == 1


@pytest.mark.django_db
def test_retraction_with_destroy_shreds_the_evidence_and_downloads_say_so(
    keys: dict[str, str], cast: Cast, tmp_path: Path, django_capture_on_commit_callbacks: object
) -> None:
    lab = cast.lab
    artifact = stored(lab, tmp_path)
    finding = factories.make_finding(lab.project, tier=Tier.PARTNERS)
    finding.artifacts.add(artifact)
    path = artifact_root() / artifact.path
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        response = login(lab.alice).post(
            reverse("finding-retract", args=[finding.pk]),
            {
                "reason": "wrong seed",
                "confirm": "1",
                "destroy_data": "1",
                "destroy_reason": "personal data in the log",
                "confirm_destroy": "1",
            },
        )
    assert response.status_code == 302
    artifact.refresh_from_db()
    assert artifact.wrapped_key is None and artifact.shredded_at is not None
    assert not path.exists()
    page = login(lab.alice).get(reverse("artifact-download", args=[artifact.pk]))
    assert page.status_code == 410 and b"destroyed" in page.content
    entry = AuditEntry.objects.get(action="finding.retract", finding_id=finding.pk)
    assert entry.new is not None
    assert entry.new["destroyed"][0]["artifact"] == artifact.pk


@pytest.mark.django_db
def test_retraction_without_destroy_keeps_the_data(
    keys: dict[str, str], cast: Cast, tmp_path: Path
) -> None:
    artifact = stored(cast.lab, tmp_path)
    finding = factories.make_finding(cast.lab.project)
    finding.artifacts.add(artifact)
    do_retract_finding(finding, reason="superseded", acting_user=cast.lab.alice)
    artifact.refresh_from_db()
    assert b"".join(open_artifact(artifact)) == SECRET


@pytest.mark.django_db
def test_public_release_restores_the_evidence_in_the_clear(
    keys: dict[str, str], cast: Cast, tmp_path: Path, django_capture_on_commit_callbacks: object
) -> None:
    artifact = stored(cast.lab, tmp_path)
    finding = factories.make_finding(cast.lab.project)
    finding.artifacts.add(artifact)
    promote(cast, finding, to=Tier.PARTNERS)
    assert on_disk(artifact).startswith(crypto.MAGIC)  # partners is still restricted
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        promote(cast, finding)
    artifact.refresh_from_db()
    assert artifact.encrypted is False and artifact.wrapped_key is None
    assert on_disk(artifact) == SECRET
    assert Client().get(reverse("artifact-download", args=[artifact.pk])).status_code == 200
    assert AuditEntry.objects.filter(action="artifact.declassify").count() == 1


def test_a_missing_master_key_fails_the_system_check_when_debug_is_off(settings: object) -> None:
    settings.DEBUG = False  # type: ignore[attr-defined]
    settings.H3LAB_MASTER_KEYS = ""  # type: ignore[attr-defined]
    settings.H3LAB_MASTER_KEY_FILE = ""  # type: ignore[attr-defined]
    settings.H3LAB_MASTER_KEY_AUTOCREATE = False  # type: ignore[attr-defined]
    assert [e.id for e in checks.check_master_key(None)] == ["h3lab.E010"]
    settings.H3LAB_MASTER_KEYS = "bad"  # type: ignore[attr-defined]
    assert [e.id for e in checks.check_master_key(None)] == ["h3lab.E011"]
    settings.H3LAB_MASTER_KEYS = master("prod")  # type: ignore[attr-defined]
    assert checks.check_master_key(None) == []


@pytest.mark.django_db  # a key is generated only over a database that records none
def test_the_development_key_file_is_created_once_with_owner_only_permissions(
    settings: object, tmp_path: Path
) -> None:
    path = tmp_path / "var" / "master.key"
    settings.H3LAB_MASTER_KEYS = ""  # type: ignore[attr-defined]
    settings.H3LAB_MASTER_KEY_FILE = str(path)  # type: ignore[attr-defined]
    settings.H3LAB_MASTER_KEY_AUTOCREATE = True  # type: ignore[attr-defined]
    first = keystore.current()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keystore.current() == first  # reused, not regenerated

"""Publication bundles: exported by a release manager as a job, streamed, signed; verified by
``verify_bundle`` and by plain openssl + sha256sum; anything not releasable is refused with its
exact blockers; signing-key rotation keeps old bundles verifiable; the keys are published."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.urls import reverse

from disclosure import bundles, signing
from disclosure.actions.exports import check_request_export
from disclosure.actions.keys import do_revoke_signing_key
from disclosure.exports.build import build_export, open_export
from disclosure.exports.formats import finding_slug
from disclosure.exports.rules import ExportRefused
from disclosure.models import AuditEntry, Export, ExportKind, ExportStatus, SigningKeyStatus
from experiments.models import Finding, Tier
from experiments.storage import store_file
from tests import factories
from tests.conftest import Cast, login
from tests.publishing import promote
from tests.tarballs import members, repack

pytestmark = pytest.mark.django_db

BODY = (
    "We observe that an induction head forms in the second layer at approximately step 300. "
    "In particular, the prefix-matching score rises quickly, however the copying score does "
    "not move until several hundred steps later. This suggests that the two circuits are "
    "learned in sequence rather than together.\n\n"
    "For example, the H3 model shows the same ordering: its shift SSM typically learns a "
    "previous-token filter first. We therefore think the method is not specific to attention; "
    "consequently, the results do not depend on the architecture."
)
PNG = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00"
    b"\x1f\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\xcf\xc0\xf0\x1f\x00\x05\x00\x01\xff\x89\x99"
    b"=\x1d\x00\x00\x00\x00IEND\xaeB`\x82"
)


@pytest.fixture(autouse=True)
def master_key(settings: Any) -> None:
    settings.H3LAB_MASTER_KEYS = "mk:" + base64.b64encode(os.urandom(32)).decode()


def evidence_finding(
    cast: Cast, tmp_path: Path, *, title: str = "Induction heads in H3"
) -> Finding:
    """A finding with a run (metrics, config) and cited artifacts: a plot, a CSV, a checkpoint."""
    lab = cast.lab
    run = factories.make_run(lab.project, user=lab.alice)
    factories.add_metrics(run, "test_accuracy", [0.1, 0.5, 0.97])
    artifacts = []
    for name, data in (
        ("attention.png", PNG),
        ("probe.csv", b"layer,head,score\n1,3,0.97\n"),
        ("model.safetensors", os.urandom(3000)),
    ):
        src = tmp_path / name
        src.write_bytes(data)
        a = store_file(run, src, name)
        a.save()
        artifacts.append(a)
    finding = factories.make_finding(lab.project, title=title, body=BODY, created_by=lab.alice)
    finding.runs.add(run)
    finding.artifacts.add(*artifacts)
    return finding


def export_now(cast: Cast, findings: list[Finding], **kw: Any) -> Export:
    export = check_request_export(
        kind=kw.pop("kind", ExportKind.PUBLIC), findings=findings, acting_user=cast.mara, **kw
    )
    assert build_export(export.pk) == "succeeded", Export.objects.get(pk=export.pk).message
    export.refresh_from_db()
    return export


def bundle_bytes(export: Export) -> bytes:
    return b"".join(open_export(export))


def verify(path: Path, *extra: str) -> tuple[bool, str]:
    out = io.StringIO()
    try:
        call_command("verify_bundle", str(path), *extra, stdout=out)
    except CommandError:
        return False, out.getvalue()
    return True, out.getvalue()


@pytest.fixture
def public(cast: Cast, tmp_path: Path) -> Finding:
    return promote(cast, evidence_finding(cast, tmp_path))


def test_a_public_finding_exports_as_a_signed_bundle_with_its_evidence(
    cast: Cast, public: Finding, tmp_path: Path
) -> None:
    export = export_now(cast, [public])
    files = {m.name.split("/", 1)[1]: data for m, data in members(bundle_bytes(export))}
    slug = finding_slug(public)
    run = public.runs.get()
    expected = {
        f"findings/{slug}.md",
        f"findings/{slug}.json",
        f"evidence/{slug}/runs/{run.pk}/config.json",
        f"evidence/{slug}/runs/{run.pk}/metrics.csv",
        f"evidence/{slug}/runs/{run.pk}/metrics.json",
        *(f"evidence/{slug}/artifacts/{run.pk}-{n}" for n in
          ("attention.png", "probe.csv", "model.safetensors")),
        "ro-crate-metadata.json",
        "CITATION.cff",
        "audit-checkpoint.json",
        "SHA256SUMS",
        "SHA256SUMS.sig",
        "manifest.json",
        "manifest.json.sig",
    }  # fmt: skip
    assert set(files) == expected
    assert files[f"evidence/{slug}/artifacts/{run.pk}-attention.png"] == PNG  # public: unmarked
    assert BODY in files[f"findings/{slug}.md"].decode()
    doc = json.loads(files[f"findings/{slug}.json"])
    assert [d["to"] for d in doc["release_decisions"]] == ["review", "partners", "public"]
    assert "test_accuracy,20,0.97" in files[f"evidence/{slug}/runs/{run.pk}/metrics.csv"].decode()
    crate = json.loads(files["ro-crate-metadata.json"])
    assert crate["@context"] == "https://w3id.org/ro/crate/1.1/context"
    root = next(e for e in crate["@graph"] if e["@id"] == "./")
    assert root["@type"] == "Dataset" and root["datePublished"] and root["license"]["@id"]
    content = {p for p in expected if p not in bundles.META_FILES}
    # the audit checkpoint describes the platform's log, not the research: not a crate part
    parts = content - {"ro-crate-metadata.json", "audit-checkpoint.json"}
    assert {p["@id"] for p in root["hasPart"]} == parts
    assert "cff-version: 1.2.0" in files["CITATION.cff"].decode()
    manifest = json.loads(files["manifest.json"])
    assert manifest["key_id"] == export.signing_key_id == signing.current_key().key_id
    assert export.encrypted is False  # public content needs no encryption at rest
    bundle = tmp_path / export.filename
    bundle.write_bytes(bundle_bytes(export))
    assert verify(bundle)[0] is True
    assert AuditEntry.objects.filter(action="export.build", object_id=str(export.pk)).exists()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_and_sha256sum_verify_a_real_exported_bundle(
    cast: Cast, public: Finding, tmp_path: Path
) -> None:
    export = export_now(cast, [public])
    (tmp_path / "b.tar.gz").write_bytes(bundle_bytes(export))
    pem = Client().get(reverse("key-pem", args=[export.signing_key_id])).content
    (tmp_path / "key.pem").write_bytes(pem)
    subprocess.run(["tar", "xzf", "b.tar.gz"], cwd=tmp_path, check=True)
    folder = tmp_path / export.name
    for signed in ("manifest.json", "SHA256SUMS"):
        ok = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "key.pem"),
             "-rawin", "-in", signed, "-sigfile", f"{signed}.sig"],
            cwd=folder, capture_output=True, text=True,
        )  # fmt: skip
        assert ok.returncode == 0 and "Signature Verified Successfully" in ok.stdout, ok.stderr
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True)
    assert sums.returncode == 0, sums.stdout


def test_changing_any_byte_of_an_exported_bundle_fails_verification_naming_the_file(
    cast: Cast, public: Finding, tmp_path: Path
) -> None:
    items = members(bundle_bytes(export_now(cast, [public])))
    for i, (info, data) in enumerate(items):
        rel = info.name.split("/", 1)[1]
        for pos in {0, len(data) // 2, len(data) - 1}:
            changed = bytearray(data)
            changed[pos] ^= 0x01
            bad = tmp_path / "bad.tar.gz"
            bad.write_bytes(repack([*items[:i], (info, bytes(changed)), *items[i + 1 :]]))
            ok, report = verify(bad)
            assert ok is False, rel
            assert f"- {rel.removesuffix('.sig')}" in report, (rel, report)


def test_a_wrong_public_key_and_a_revoked_key_fail_verification(
    cast: Cast, public: Finding, tmp_path: Path
) -> None:
    export = export_now(cast, [public])
    bundle = tmp_path / "b.tar.gz"
    bundle.write_bytes(bundle_bytes(export))
    other = tmp_path / "other.pem"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    other.write_bytes(bundles.public_key_pem(Ed25519PrivateKey.generate().public_key()))
    ok, report = verify(bundle, "--key", str(other))
    assert ok is False and "manifest.json: signature does not verify" in report
    key = signing.current_key()
    pem = tmp_path / "right.pem"
    pem.write_text(key.public_key_pem)
    assert verify(bundle, "--key", str(pem))[0] is True
    do_revoke_signing_key(key, reason="laptop lost", acting_user=cast.mara)
    ok, report = verify(bundle)
    assert ok is False and "revoked" in report


def test_rotating_the_signing_key_keeps_old_bundles_verifiable_and_publishes_both(
    cast: Cast, public: Finding, tmp_path: Path
) -> None:
    old = export_now(cast, [public])
    call_command("rotate_signing_key", stdout=io.StringIO())
    new = export_now(cast, [public])
    assert old.signing_key_id != new.signing_key_id
    for export in (old, new):
        path = tmp_path / f"{export.pk}.tar.gz"
        path.write_bytes(bundle_bytes(export))
        assert verify(path)[0] is True
    listing = Client().get(reverse("keys"))
    assert listing.status_code == 200
    assert old.signing_key_id.encode() in listing.content and b"retired" in listing.content
    doc = Client().get(reverse("keys-json")).json()
    status = {k["key_id"]: k["status"] for k in doc["keys"]}
    assert status == {old.signing_key_id: "retired", new.signing_key_id: "current"}
    pem = Client().get(reverse("key-pem", args=[old.signing_key_id]))
    assert pem.status_code == 200 and pem.content.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert pem["X-H3lab-Key-Status"] == SigningKeyStatus.RETIRED
    assert Client().get("/keys/no-such-key.pem").status_code == 404


def test_the_signing_private_key_is_stored_only_wrapped(cast: Cast) -> None:
    key = signing.current_key()
    raw = signing.private_key(key).private_bytes_raw()
    assert raw not in bytes(key.wrapped_private_key)
    assert key.master_key_id == "mk"


def test_non_public_or_undecided_findings_are_refused_with_exactly_what_blocks_each(
    cast: Cast, public: Finding
) -> None:
    p = cast.lab.project
    team = factories.make_finding(p, title="Draft")
    partners = promote(cast, factories.make_finding(p, title="Shared"), to=Tier.PARTNERS)
    undecided = factories.make_finding(p, tier=Tier.PUBLIC, title="Set public by hand")
    retracted = promote(cast, factories.make_finding(p, title="Withdrawn"))
    from disclosure.actions.retraction import do_retract_finding

    do_retract_finding(retracted, reason="bug", acting_user=cast.lab.alice)
    retracted.refresh_from_db()
    with pytest.raises(ExportRefused) as refused:
        check_request_export(
            kind=ExportKind.PUBLIC,
            findings=[public, team, partners, undecided, retracted],
            acting_user=cast.mara,
        )
    nd = "no recorded release decision to the public tier"
    assert refused.value.blockers == {
        f"finding #{team.pk} “Draft”": ["at the team tier, not public", nd],
        f"finding #{partners.pk} “Shared”": ["at the partners tier, not public", nd],
        f"finding #{undecided.pk} “Set public by hand”": [nd],
        f"finding #{retracted.pk} “Withdrawn”": ["retracted"],
    }
    assert not Export.objects.exists()
    entry = AuditEntry.objects.get(action="export.refuse")
    assert entry.new is not None
    assert entry.new["blockers"] == refused.value.blockers


def test_the_export_pages_queue_a_job_show_progress_and_stream_the_bundle(
    cast: Cast, public: Finding, django_capture_on_commit_callbacks: Any
) -> None:
    client = login(cast.mara)
    with django_capture_on_commit_callbacks() as sent:
        response = client.post(reverse("export-public"), {"findings": [public.pk]})
    assert len(sent) == 1  # the job is sent after commit
    export = Export.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse(
        "export", args=[export.pk]
    )
    progress = client.get(reverse("export-progress", args=[export.pk])).json()
    assert (progress["status"], progress["active"]) == (ExportStatus.QUEUED, True)
    assert build_export(export.pk) == "succeeded"
    assert build_export(export.pk) == "skipped"  # a duplicate delivery does nothing
    progress = client.get(reverse("export-progress", args=[export.pk])).json()
    assert (progress["status"], progress["progress"]) == (ExportStatus.SUCCEEDED, 1.0)
    page = client.get(reverse("export", args=[export.pk]))
    assert reverse("export-download", args=[export.pk]).encode() in page.content
    download = client.get(reverse("export-download", args=[export.pk]))
    blob = b"".join(download.streaming_content)  # type: ignore[attr-defined]
    assert download["Content-Disposition"] == f'attachment; filename="{export.filename}"'
    assert bundles.verify_bundle(io.BytesIO(blob), signing.trusted_public_keys()).ok
    assert AuditEntry.objects.filter(action="export.download").count() == 1


def test_the_export_page_lists_the_blockers_of_a_refused_request(cast: Cast) -> None:
    # A team-tier draft is not even a valid choice for a release manager (they cannot see it).
    draft = factories.make_finding(cast.lab.project, title="Draft")
    response = login(cast.mara).post(reverse("export-public"), {"findings": [draft.pk]})
    assert response.status_code == 302 and not Export.objects.exists()
    review = factories.make_finding(cast.lab.project, tier=Tier.REVIEW, title="Under review")
    response = login(cast.mara).post(reverse("export-public"), {"findings": [review.pk]})
    assert response.status_code == 200
    assert b"Export refused" in response.content
    assert f"finding #{review.pk} “Under review”" in response.content.decode()
    assert b"at the review tier, not public" in response.content
    assert not Export.objects.exists()


def test_a_whole_project_exports_its_public_findings(cast: Cast, tmp_path: Path) -> None:
    a = promote(cast, evidence_finding(cast, tmp_path, title="First"))
    b = promote(cast, factories.make_finding(cast.lab.project, title="Second", body=BODY))
    factories.make_finding(cast.lab.project, title="Still private")
    export = check_request_export(
        kind=ExportKind.PUBLIC, project=cast.lab.project, acting_user=cast.mara
    )
    assert set(export.findings.all()) == {a, b}

"""Signed bundles verify with our verifier and with plain openssl + sha256sum; any changed
file is named."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from disclosure import bundles
from tests import tarballs

KEY = Ed25519PrivateKey.generate()
KEYS = {"k1": KEY.public_key()}
FILES = [
    bundles.BundleFile("findings/induction.md", b"# Induction heads form at step 300\n"),
    bundles.BundleFile("findings/induction.json", b'{"title": "Induction heads"}'),
    bundles.BundleFile("evidence/curves.csv", b"step,loss\n0,2.3\n100,0.4\n"),
]


def _bundle(files: list[bundles.BundleFile] = FILES) -> bytes:
    out = io.BytesIO()
    bundles.write_bundle(out, name="h3lab-demo", files=files, private_key=KEY, key_id="k1")
    return out.getvalue()


def test_a_fresh_bundle_verifies() -> None:
    report = bundles.verify_bundle(io.BytesIO(_bundle()), KEYS)
    assert report.ok is True, report.problems
    assert report.files_checked == 4  # three content files + SHA256SUMS


def test_the_same_bundle_verifies_uncompressed_or_recompressed() -> None:
    """The verifier inflates gzip itself (tarfile's own gzip stream is quadratic on many
    small files); any other packing is left to tarfile to recognise."""
    import bz2
    import gzip

    tar = gzip.decompress(_bundle())
    for packed in (tar, bz2.compress(tar), gzip.compress(tar, compresslevel=1)):
        report = bundles.verify_bundle(io.BytesIO(packed), KEYS)
        assert report.ok is True, report.problems
        assert report.files_checked == 4


def test_changing_any_byte_of_any_file_fails_naming_that_file() -> None:
    members = tarballs.members(_bundle())
    for i, (info, data) in enumerate(members):
        for pos in (0, len(data) - 1):
            changed = bytearray(data)
            changed[pos] ^= 0x20
            tampered = [*members[:i], (info, bytes(changed)), *members[i + 1 :]]
            report = bundles.verify_bundle(io.BytesIO(tarballs.repack(tampered)), KEYS)
            rel = info.name.split("/", 1)[1]
            assert report.ok is False
            named = rel.removesuffix(".sig")
            assert any(p.startswith(named) for p in report.problems), (rel, report.problems)


def test_corrupted_archive_bytes_fail() -> None:
    blob = bytearray(_bundle())
    blob[len(blob) // 2] ^= 0xFF
    assert bundles.verify_bundle(io.BytesIO(bytes(blob)), KEYS).ok is False


def test_missing_and_extra_files_are_reported() -> None:
    members = tarballs.members(_bundle())
    dropped = [m for m in members if not m[0].name.endswith("curves.csv")]
    report = bundles.verify_bundle(io.BytesIO(tarballs.repack(dropped)), KEYS)
    assert "evidence/curves.csv: missing from the archive" in report.problems
    extra = tarfile.TarInfo("h3lab-demo/evidence/extra.txt")
    report = bundles.verify_bundle(io.BytesIO(tarballs.repack([*members, (extra, b"x")])), KEYS)
    assert "evidence/extra.txt: not listed in the manifest" in report.problems


def test_unknown_signing_key_is_refused() -> None:
    other = {"k1": Ed25519PrivateKey.generate().public_key()}
    report = bundles.verify_bundle(io.BytesIO(_bundle()), {"k2": KEY.public_key()})
    assert report.problems == ["manifest.json: signed by unknown key 'k1'"]
    report = bundles.verify_bundle(io.BytesIO(_bundle()), other)
    assert "manifest.json: signature does not verify" in report.problems


def test_paths_that_escape_the_bundle_are_rejected() -> None:
    with pytest.raises(ValueError):
        _bundle([bundles.BundleFile("../etc/passwd", b"x")])


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_and_sha256sum_verify_a_real_bundle(tmp_path: Path) -> None:
    (tmp_path / "b.tar.gz").write_bytes(_bundle())
    (tmp_path / "key.pem").write_bytes(bundles.public_key_pem(KEY.public_key()))
    subprocess.run(["tar", "xzf", "b.tar.gz"], cwd=tmp_path, check=True)
    folder = tmp_path / "h3lab-demo"
    for signed in ("manifest.json", "SHA256SUMS"):
        ok = subprocess.run(
            ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "key.pem"),
             "-rawin", "-in", signed, "-sigfile", f"{signed}.sig"],
            cwd=folder, capture_output=True, text=True,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "Signature Verified Successfully" in ok.stdout
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True)
    assert sums.returncode == 0
    (folder / "evidence" / "curves.csv").write_bytes(b"step,loss\n0,9.9\n")
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True)
    assert sums.returncode != 0 and b"evidence/curves.csv: FAILED" in sums.stdout

"""``manage.py verify_bundle FILE [--key PEM]``: check a publication bundle's signatures and
every file's SHA-256 and size; name exactly what fails."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.management.base import BaseCommand, CommandError, CommandParser

from disclosure import bundles


class _AnyId(Mapping[str, Ed25519PublicKey]):
    """One key given on the command line answers for whatever key id the manifest names: the
    signature then proves the bundle was signed by *that* key."""

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    def __getitem__(self, key_id: str) -> Ed25519PublicKey:
        return self._key

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 1


class Command(BaseCommand):
    help = (
        "Verify a bundle: both Ed25519 signatures (manifest.json, SHA256SUMS) and every file "
        "against the manifest. Keys come from this lab's database (revoked keys are refused) or "
        "from --key PEM. Prints OK or each failing file/signature; exits 1 on failure."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="the bundle (.tar.gz)")
        parser.add_argument("--key", help="public key PEM file to verify against")

    def handle(self, *args: Any, **opts: Any) -> None:
        path = Path(opts["file"])
        if not path.is_file():
            raise CommandError(f"{path}: no such file")
        keys: Mapping[str, Ed25519PublicKey]
        if opts["key"]:
            try:
                keys = _AnyId(bundles.load_public_key_pem(Path(opts["key"]).read_bytes()))
            except (OSError, ValueError) as exc:
                raise CommandError(
                    f"{opts['key']}: not an Ed25519 public key PEM ({exc})"
                ) from None
        else:
            keys = self._db_keys()
        with path.open("rb") as f:
            report = bundles.verify_bundle(f, keys)
        if report.ok and not opts["key"]:
            report = self._check_status(report)
        if not report.ok:
            self.stdout.write(report.summary())
            raise CommandError(f"{path}: verification FAILED")
        self.stdout.write(report.summary())

    @staticmethod
    def _db_keys() -> dict[str, Ed25519PublicKey]:
        from disclosure.models import SigningKey

        return {
            k.key_id: bundles.load_public_key_pem(k.public_key_pem.encode())
            for k in SigningKey.objects.all()
        }

    @staticmethod
    def _check_status(report: bundles.VerifyReport) -> bundles.VerifyReport:
        from disclosure.models import SigningKey, SigningKeyStatus

        key = SigningKey.objects.filter(key_id=report.key_id).first()
        if key is not None and key.status == SigningKeyStatus.REVOKED:
            report.ok = False
            report.problems.append(
                f"manifest.json: signed by key {report.key_id}, which was revoked "
                f"{key.revoked_at:%Y-%m-%d}"
            )
        return report

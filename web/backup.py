"""One consistent backup archive of a deployment, and its restore on a fresh machine.

Archive (an uncompressed tar: artifacts are ciphertext and do not compress; ``.tar.gz`` if the
name says so)::

    h3lab-backup/database.sqlite3 | database.pgdump   the database (SQLite online backup API,
                                                       or ``pg_dump --format=custom``)
    h3lab-backup/data/artifacts/…                      artifact store (ciphertext, or public)
    h3lab-backup/data/exports/…                        built bundles (partner copies encrypted)
    h3lab-backup/data/runs/<id>/…                      working folders of queued/running runs
                                                       (their checkpoints, to resume)
    h3lab-backup/data/audit-checkpoints/…              signed audit-chain checkpoints
    h3lab-backup/manifest.json                         SHA-256 and size of every file above,
                                                       master-key fingerprints, counts

Consistency: the database is dumped first, as one snapshot; files are copied after it.
Artifacts and bundles are written complete and renamed into place before their row commits,
so every file the snapshot names exists when it is copied (a later file is extra, harmless).
The windows that remain — an artifact shredded, or declassified in place, while the backup
runs — are caught by the restore, which decrypts every artifact and names those that fail.

SECURITY: master keys are never in the archive; the manifest records only their fingerprints
(:mod:`vault.fingerprints`), and the restore refuses keys that do not match them. The audit
checkpoint signing key (H3LAB_AUDIT_KEY / _FILE) is not in it either: a restore without it
cannot sign new checkpoints under the old key, and verify_audit names checkpoints it cannot
check. Checkpoints of
unfinished runs are plaintext (as on the worker's disk): keep the archive access-controlled.

Object storage: with ``H3LAB_STORAGE=s3`` the artifacts and bundles live in a bucket, not in
the data folder, and both commands refuse (:func:`require_filesystem_storage`): back up the
bucket with its own tools (docs/operations.md, Object storage).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone

FORMAT = "h3lab-backup"
VERSION = 1
TOP = "h3lab-backup"
CHUNK = 1 << 20
Say = Callable[[str], None]


class BackupError(Exception):
    """The backup or restore cannot proceed; the message says why and what to do."""


# --- helpers -------------------------------------------------------------------------------------


def require_filesystem_storage() -> None:
    """Refuse when artifacts or bundles are in an object-storage bucket: this archive copies
    folders, and a backup without the bucket's objects would restore rows naming nothing."""
    from django.core.files.storage import storages

    from experiments.storage_backends import is_object_storage

    if any(is_object_storage(storages[alias]) for alias in ("artifacts", "exports")):
        raise BackupError(
            "artifacts and export bundles are in an S3 bucket (H3LAB_STORAGE=s3), not in "
            "H3LAB_DATA_DIR: back up the bucket with its own tools (versioning or replication, "
            "or `aws s3 sync`) together with the database; see docs/operations.md, Object storage"
        )


def data_dirs() -> dict[str, Path]:
    """The folders a backup holds, by their name in the archive (``data/<name>/…``)."""
    return {
        "artifacts": Path(settings.ARTIFACTS_DIR),
        "exports": Path(settings.EXPORTS_DIR),
        "runs": Path(settings.RUNS_DIR),
        # Signed audit checkpoints (their signing key, like the master keys, is kept apart).
        "audit-checkpoints": Path(settings.H3LAB_AUDIT_CHECKPOINT_DIR),
    }


def engine() -> str:
    vendor = connection.vendor
    if vendor not in ("sqlite", "postgresql"):
        raise BackupError(f"backups support SQLite and PostgreSQL, not {vendor}")
    return vendor


def _pg_tool(name: str) -> str:
    """``pg_dump``/``pg_restore``: from H3LAB_PG_BIN_DIR when set (its major version must be
    the server's or newer), else from PATH."""
    bin_dir = getattr(settings, "H3LAB_PG_BIN_DIR", "")
    found = str(Path(bin_dir) / name) if bin_dir else shutil.which(name)
    if not found or not Path(found).is_file():
        raise BackupError(
            f"{name} not found (install the PostgreSQL client or set H3LAB_PG_BIN_DIR)"
        )
    return found


def _pg_env() -> tuple[list[str], dict[str, str]]:
    s = connection.settings_dict
    env = {**os.environ}
    for var, key in (("PGHOST", "HOST"), ("PGPORT", "PORT"), ("PGUSER", "USER")):
        if s.get(key):
            env[var] = str(s[key])
    if s.get("PASSWORD"):
        env["PGPASSWORD"] = str(s["PASSWORD"])  # SECURITY: environment, never the command line
    return ["--no-password", f"--dbname={s['NAME']}"], env


def _run(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise BackupError(f"{Path(argv[0]).name} failed: {done.stderr.strip()[-2000:]}")


class _Hashing(io.RawIOBase):
    """Reads a file while hashing what was read."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        n = self._f.readinto(buf)  # type: ignore[attr-defined]
        if n:
            self.sha256.update(memoryview(buf)[:n])
        return n or 0


def _files_under(root: Path) -> Iterator[Path]:
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and not path.name.endswith(".part"):
                yield path


# --- backup --------------------------------------------------------------------------------------


def dump_database(dest_dir: Path) -> str:
    """Write one consistent snapshot of the database into ``dest_dir``; returns the file name."""
    if engine() == "sqlite":
        if connection.in_atomic_block:  # its own write lock would block the copy forever
            raise BackupError("SQLite cannot be backed up from inside a transaction")
        name = "database.sqlite3"
        connection.ensure_connection()
        target = sqlite3.connect(dest_dir / name)
        try:
            connection.connection.backup(target)  # the online backup API: a consistent copy
        finally:
            target.close()
        return name
    name = "database.pgdump"
    args, env = _pg_env()
    _run([_pg_tool("pg_dump"), "--format=custom", f"--file={dest_dir / name}", *args], env)
    return name


def active_run_ids() -> list[int]:
    from experiments.models import ACTIVE_STATUSES, Run

    return list(Run.objects.filter(status__in=ACTIVE_STATUSES).values_list("pk", flat=True))


def key_records() -> list[dict[str, Any]]:
    from vault import registry

    return [
        {"key_id": r.key_id, "fingerprint": r.fingerprint, "current": r.current,
         "retired": r.retired}
        for r in registry.records()
    ]  # fmt: skip


def counts() -> dict[str, int]:
    from disclosure.models import AuditEntry, Export, ExportStatus
    from experiments.models import Artifact, Finding, Project, Run, RunStatus

    models: dict[str, Any] = {
        "projects": Project.objects,
        "runs": Run.objects,
        "queued runs": Run.objects.filter(status=RunStatus.QUEUED),
        "artifacts": Artifact.objects,
        "findings": Finding.objects,
        "audit entries": AuditEntry.objects,
        "built exports": Export.objects.filter(status=ExportStatus.SUCCEEDED),
    }
    return {name: int(qs.count()) for name, qs in models.items()}


def create_backup(out: Path, *, say: Say) -> dict[str, Any]:
    """Write the archive to ``out`` (atomically: ``out`` appears only complete, mode 0600) and
    return its manifest. The process's master keys are checked first (as at any start)."""
    from vault.registry import NotMigrated
    from web.startup import KeysRefused, check_master_keys

    require_filesystem_storage()
    try:
        check_master_keys("backup")
        key_records()
    except KeysRefused as exc:
        raise BackupError(str(exc)) from None
    except NotMigrated:
        raise BackupError("the database is not migrated: there is nothing to back up") from None
    out = out.resolve()
    if out.exists():
        raise BackupError(f"{out} exists; choose a new name")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    part = out.with_name(out.name + ".part")
    try:
        db_file = dump_database(work)
        say(f"database: {engine()} snapshot taken")
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "created_at": timezone.now().isoformat(),
            "database": {"engine": engine(), "file": db_file},
            "keys": key_records(),
            "counts": counts(),
            "files": {},
        }
        mode = "w:gz" if out.name.endswith((".gz", ".tgz")) else "w"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode=mode) as tar:  # type: ignore[call-overload]
            _add(tar, work / db_file, db_file, manifest)
            dirs = data_dirs()
            kept = ("artifacts", "exports", "audit-checkpoints")
            sources = [(d, p) for d in kept for p in _files_under(dirs[d])]
            for run_id in active_run_ids():  # a finished run's folder is scratch, not data
                sources += [("runs", p) for p in _files_under(dirs["runs"] / str(run_id))]
            for d, path in sources:
                rel = f"data/{d}/" + path.relative_to(dirs[d]).as_posix()
                try:
                    _add(tar, path, rel, manifest)
                except (OSError, tarfile.TarError) as exc:  # a checkpoint replaced mid-copy
                    if not rel.startswith("data/runs/"):
                        raise
                    say(f"skipped {rel}: {exc}")
            body = json.dumps(manifest, indent=2, sort_keys=True).encode()
            info = tarfile.TarInfo(f"{TOP}/manifest.json")
            info.size, info.mtime, info.mode = len(body), int(timezone.now().timestamp()), 0o600
            tar.addfile(info, io.BytesIO(body))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _add(tar: tarfile.TarFile, path: Path, rel: str, manifest: dict[str, Any]) -> None:
    with path.open("rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        info = tarfile.TarInfo(f"{TOP}/{rel}")
        info.size, info.mtime, info.mode = size, int(path.stat().st_mtime), 0o600
        reader = _Hashing(f)
        tar.addfile(info, io.BufferedReader(reader, CHUNK))
    manifest["files"][rel] = {"sha256": reader.sha256.hexdigest(), "size": size}


# --- restore -------------------------------------------------------------------------------------


@dataclass
class RestoreReport:
    counts: dict[str, int] = field(default_factory=dict)
    artifacts_ok: int = 0
    bundles_ok: int = 0
    resent_runs: list[int] = field(default_factory=list)
    resent_exports: list[int] = field(default_factory=list)
    running_runs: int = 0
    audit: str = ""
    problems: list[str] = field(default_factory=list)


def read_manifest(tar: tarfile.TarFile) -> dict[str, Any]:
    try:
        member = tar.getmember(f"{TOP}/manifest.json")
        f = tar.extractfile(member)
    except KeyError:
        raise BackupError("not an h3lab backup (no h3lab-backup/manifest.json)") from None
    if f is None:
        raise BackupError("not an h3lab backup (manifest is not a file)")
    manifest: dict[str, Any] = json.loads(f.read(1 << 26))
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BackupError(
            f"unsupported backup format {manifest.get('format')} v{manifest.get('version')}"
        )
    return manifest


def key_problems(manifest: dict[str, Any]) -> list[str]:
    """Why this process's master keys cannot read the backup's data: every key the manifest
    records (and has not retired) must be held, with the recorded fingerprint."""
    from vault import keystore
    from vault.crypto import KeyError_
    from vault.fingerprints import fingerprint

    if settings.H3LAB_MASTER_KEY_AUTOCREATE and not settings.H3LAB_MASTER_KEYS:
        path = Path(settings.H3LAB_MASTER_KEY_FILE)
        if not path.is_file():  # SECURITY: a fresh development key would open nothing
            return [f"no master key: put the deployment's key file at {path} (or set "
                    "H3LAB_MASTER_KEYS) before restoring"]  # fmt: skip
    try:
        held = {k.key_id: fingerprint(k) for k in keystore.keyring().keys}
    except KeyError_ as exc:
        return [str(exc)]
    problems = []
    for rec in manifest.get("keys", []):
        if rec.get("retired"):
            continue
        given = held.get(rec["key_id"])
        if given is None:
            problems.append(
                f"master key {rec['key_id']!r} (fingerprint {rec['fingerprint']}) is not "
                "configured; the backup's data is encrypted under it"
            )
        elif given != rec["fingerprint"]:
            problems.append(
                f"master key {rec['key_id']!r} does not match the key this backup's data was "
                f"encrypted with (fingerprint {rec['fingerprint']} expected, {given} given)"
            )
    return problems


def require_empty_target() -> None:
    tables = connection.introspection.table_names()
    if tables:
        raise BackupError(
            f"the database {connection.settings_dict['NAME']} is not empty ({len(tables)} "
            "tables); restore into a new, empty database"
        )
    found = [p for d in data_dirs().values() for p in _files_under(d)]
    if found:
        raise BackupError(
            f"the data folders are not empty ({len(found)} files, e.g. {found[0]}); "
            "restore into an empty H3LAB_DATA_DIR"
        )


def _extract(tar: tarfile.TarFile, manifest: dict[str, Any], stage: Path) -> None:
    """Extract every file the manifest lists into ``stage``, checking size and SHA-256;
    refuse links, paths outside the archive's folder, and files the manifest does not list.

    SECURITY: names come from the manifest, never from the member (no traversal), and only
    regular files are written."""
    files: dict[str, dict[str, Any]] = manifest["files"]
    seen: set[str] = set()
    for member in tar:
        if member.isdir():
            continue
        rel = member.name.removeprefix(f"{TOP}/")
        if rel == "manifest.json":
            continue
        if not member.isfile() or rel not in files or ".." in Path(rel).parts:
            raise BackupError(f"unexpected member {member.name!r} in the archive")
        src = tar.extractfile(member)
        if src is None:
            raise BackupError(f"{member.name}: no contents")
        dest = stage / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with dest.open("wb") as out:
            while chunk := src.read(CHUNK):
                h.update(chunk)
                out.write(chunk)
        want = files[rel]
        if h.hexdigest() != want["sha256"] or dest.stat().st_size != want["size"]:
            raise BackupError(f"{rel}: does not match the manifest's SHA-256 (damaged archive)")
        seen.add(rel)
    missing = sorted(set(files) - seen)
    if missing:
        raise BackupError(
            f"the archive lacks {len(missing)} files its manifest lists: {missing[:3]}"
        )


def load_database(path: Path, manifest: dict[str, Any]) -> None:
    kind = manifest["database"]["engine"]
    if kind != engine():
        raise BackupError(
            f"the backup holds a {kind} database; this deployment uses {engine()} "
            "(restore into the same engine)"
        )
    if kind == "sqlite":
        connection.ensure_connection()
        source = sqlite3.connect(path)
        try:
            source.backup(connection.connection)
        finally:
            source.close()
    else:
        args, env = _pg_env()
        _run(
            [_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
             "--single-transaction", *args, str(path)],
            env,
        )  # fmt: skip
    connection.close()


def restore_backup(archive: Path, *, say: Say) -> RestoreReport:
    """Restore ``archive`` into this (empty) database and data folder, then verify it all."""
    if not archive.is_file():
        raise BackupError(f"{archive}: no such file")
    require_filesystem_storage()
    require_empty_target()
    dirs = data_dirs()
    dirs["artifacts"].parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".restore-", dir=dirs["artifacts"].parent))
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            manifest = read_manifest(tar)
            problems = key_problems(manifest)
            if problems:
                raise BackupError("refusing to restore: " + "; ".join(problems))
        with tarfile.open(archive, mode="r|*") as tar:  # one streaming pass
            _extract(tar, manifest, stage)
        say(f"archive of {manifest['created_at']}: {len(manifest['files'])} files verified")
        load_database(stage / manifest["database"]["file"], manifest)
        call_command("migrate", interactive=False, verbosity=0)
        say(f"database: {manifest['database']['engine']} restored and migrated")
        for d, dest in dirs.items():
            if (stage / "data" / d).is_dir():
                if dest.is_dir():
                    shutil.rmtree(dest)  # holds no file: require_empty_target checked
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(stage / "data" / d, dest)  # a rename on one filesystem
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return verify_restored(manifest, say=say)


def verify_restored(manifest: dict[str, Any], *, say: Say) -> RestoreReport:
    """After a restore: keys against the restored records, the audit chain, every artifact
    (decrypted, SHA-256 compared), every built bundle (signatures and files); then re-send
    what was queued and audit the restore."""
    from disclosure import audit
    from web.startup import KeysRefused, check_master_keys

    report = RestoreReport(counts=counts())
    try:
        check_master_keys("restore")
    except KeysRefused as exc:
        report.problems.append(str(exc))
    out = io.StringIO()
    try:
        call_command("verify_audit", stdout=out)
        report.audit = out.getvalue().strip()
    except CommandError as exc:
        report.problems.append(str(exc))
        report.audit = f"FAILED: {exc}"
    _verify_artifacts(report)
    _verify_bundles(report)
    _resend(report)
    audit.record(
        None,
        "backup.restore",
        None,
        new={
            "backup_created_at": manifest["created_at"],
            "artifacts_verified": report.artifacts_ok,
            "bundles_verified": report.bundles_ok,
            "resent_runs": report.resent_runs,
            "problems": report.problems,
        },
    )
    return report


def _verify_artifacts(report: RestoreReport) -> None:
    from experiments.models import Artifact
    from experiments.storage import ArtifactUnavailable, open_artifact

    for artifact in Artifact.objects.filter(shredded_at__isnull=True).iterator():
        h = hashlib.sha256()
        try:
            for chunk in open_artifact(artifact):
                h.update(chunk)
        except (ArtifactUnavailable, FileNotFoundError) as exc:
            report.problems.append(f"artifact {artifact.pk} ({artifact.path}): {exc}")
            continue
        if artifact.sha256 and h.hexdigest() != artifact.sha256:
            report.problems.append(f"artifact {artifact.pk} ({artifact.path}): SHA-256 differs")
            continue
        report.artifacts_ok += 1


def _verify_bundles(report: RestoreReport) -> None:
    from disclosure import bundles
    from disclosure.exports.build import open_export
    from disclosure.models import Export, ExportStatus, SigningKey
    from experiments.storage import ArtifactUnavailable, IterReader

    keys = {
        k.key_id: bundles.load_public_key_pem(k.public_key_pem.encode())
        for k in SigningKey.objects.all()
    }
    for export in Export.objects.filter(status=ExportStatus.SUCCEEDED).exclude(path=""):
        try:
            stream = io.BufferedReader(IterReader(open_export(export)), CHUNK)
            result = bundles.verify_bundle(stream, keys)
        except (ArtifactUnavailable, FileNotFoundError) as exc:
            report.problems.append(f"export {export.pk} ({export.path}): {exc}")
            continue
        if not result.ok:
            report.problems.append(f"export {export.pk}: {'; '.join(result.problems)}")
            continue
        report.bundles_ok += 1


def _resend(report: RestoreReport) -> None:
    """Queued runs and exports: the broker's messages did not survive the move; send them
    again. Running runs had their worker on the old machine; the reaper requeues them (from
    their checkpoint) once their heartbeat is older than H3LAB_HEARTBEAT_TIMEOUT_S."""
    from disclosure.actions.exports import _enqueue as enqueue_export
    from disclosure.models import Export, ExportStatus
    from experiments.actions.runs import enqueue_run
    from experiments.models import Run, RunStatus

    with transaction.atomic():  # each send happens once this commits
        for run in Run.objects.filter(status=RunStatus.QUEUED).only("pk", "queue"):
            enqueue_run(run)
            report.resent_runs.append(run.pk)
        for export in Export.objects.filter(status=ExportStatus.QUEUED):
            enqueue_export(export)
            report.resent_exports.append(export.pk)
    report.running_runs = Run.objects.filter(status=RunStatus.RUNNING).count()

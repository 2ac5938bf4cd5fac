"""Backup and restore, end to end: a deployment with a project, runs with encrypted artifacts,
a public finding with its audit trail and an export bundle is backed up, then restored on a
"fresh machine" (a new database and data folder, in a new process) where the artifacts decrypt,
the audit chain and the bundle verify and the queued run is sent again; a restore with the
wrong key is refused before it touches anything. On SQLite and on a private PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from experiments.actions.runs import do_submit_run
from experiments.models import Artifact, Run, RunStatus
from experiments.storage import store_file
from tests import factories
from tests.conftest import Cast, Lab
from tests.publishing import promote
from tests.servers import PrivatePostgres, private_pg, use_database
from tests.test_publication import evidence_finding, export_now
from vault import crypto

__all__ = ["private_pg"]
ROOT = Path(__file__).resolve().parents[1]
PG_BIN = "/usr/lib/postgresql/15/bin"  # pg_dump must match the server (tests/servers.py's)


def key_spec(key_id: str = "k1") -> str:
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


@dataclass
class Source:
    """What the backed-up deployment held, to compare the restored one with."""

    key: str
    plaintext: dict[str, str]  # artifact path → SHA-256 of its plaintext
    queued_run: int
    export_path: str
    checkpoint: str
    audit_entries: int = 0


def populate(tmp_path: Path, key: str) -> Source:
    """A small lab: a public finding (its three artifacts declassified) with its export
    bundle, a team-tier finding with two encrypted artifacts, a queued run and a running one
    with a checkpoint in its working folder."""
    alice, bob, charlie = (factories.make_user(n) for n in ("alice", "bob", "charlie"))
    project = factories.make_project("induction", members=[alice])
    lab = Lab(alice, bob, charlie, project, factories.make_project("recall", members=[bob]))
    cast: Cast = factories.make_cast(lab)
    finding = promote(cast, evidence_finding(cast, tmp_path))
    export = export_now(cast, [finding])
    queued = do_submit_run(
        project=project, cfg=factories.tiny_config(), experiment_name="e", enqueue=False,
        acting_user=alice,
    )  # fmt: skip
    running = factories.make_run(project, status=RunStatus.RUNNING, user=alice)
    workdir = Path(django_settings.RUNS_DIR) / str(running.pk)
    workdir.mkdir(parents=True)
    (workdir / "checkpoint.safetensors").write_bytes(b"resume from here")
    team_run = factories.make_run(project, user=alice)  # a finding still at the team tier:
    for name in ("probe.bin", "model.safetensors"):  # its artifacts stay encrypted
        (tmp_path / name).write_bytes(os.urandom(5000))
        store_file(team_run, tmp_path / name, name).save()
    factories.make_finding(project, created_by=alice).artifacts.add(*team_run.artifacts.all())
    return Source(
        key=key,
        plaintext={},
        queued_run=queued.pk,
        export_path=export.path,
        checkpoint=f"{running.pk}/checkpoint.safetensors",
    )


def backup(out: Path, src: Source) -> str:
    from disclosure.models import AuditEntry

    src.plaintext = {a.path: a.sha256 for a in Artifact.objects.filter(encrypted=True)}
    assert len(src.plaintext) == 2 and Artifact.objects.count() == 5  # 3 were declassified
    buf = io.StringIO()
    call_command("backup", str(out), stdout=buf)
    src.audit_entries = AuditEntry.objects.count()  # the backup's own check audited the key
    return buf.getvalue()


def restore(archive: Path, target: Path, key: str, db_url: str, broker: dict[str, str]) -> Any:
    """``manage.py restore`` in a new process on a fresh data folder (the new machine)."""
    env = {
        **os.environ,
        **broker,
        "DATABASE_URL": db_url,
        "H3LAB_VAR_DIR": str(target / "var"),
        "H3LAB_DATA_DIR": str(target / "data"),
        "H3LAB_MASTER_KEYS": key,
        # kept apart from the archive, like the master keys (docs/operations.md, Backup)
        "H3LAB_AUDIT_KEY_FILE": str(django_settings.H3LAB_AUDIT_KEY_FILE),
        "H3LAB_PG_BIN_DIR": PG_BIN,
    }
    return subprocess.run(
        [sys.executable, "manage.py", "restore", str(archive)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def assert_restored(src: Source, target: Path, done: Any, rows: list[tuple[Any, ...]]) -> None:
    """The restore's own summary, and an independent look at the restored files: each artifact
    decrypts (with nothing but the key, the row's wrapped key and the file) to its plaintext."""
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert f"audit chain intact: {src.audit_entries} entries" in done.stdout
    assert "artifacts decrypted and verified: 5" in done.stdout
    assert "export bundles verified: 1" in done.stdout
    assert f"re-sent 1 queued runs [{src.queued_run}]" in done.stdout
    key_id, b64 = src.key.split(":", 1)
    master = crypto.MasterKey(key_id, base64.b64decode(b64))
    artifacts = target / "data" / "artifacts"
    for run_id, name, path, wrapped in rows:
        data_key = crypto.unwrap_key(
            master, bytes(wrapped), context=f"artifact:{run_id}:{name}".encode()
        )
        with (artifacts / path).open("rb") as f:
            digest = hashlib.sha256(b"".join(crypto.decrypt_stream(data_key, f))).hexdigest()
        assert digest == src.plaintext[path]
    assert len(rows) == 2
    restored_bundle = target / "data" / "exports" / src.export_path
    call_command("verify_bundle", str(restored_bundle), stdout=io.StringIO())
    assert (target / "data" / "runs" / src.checkpoint).read_bytes() == b"resume from here"


ARTIFACT_ROWS = "SELECT run_id, name, path, wrapped_key FROM experiments_artifact WHERE encrypted"


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database, made once (the release rules and groups come from data
    migrations, which a flushed test database would lack)."""
    path = tmp_path_factory.mktemp("sqlite-template") / "h3lab.sqlite3"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, check=True, capture_output=True,
        env={**os.environ, "DATABASE_URL": f"sqlite:///{path}"},
    )  # fmt: skip
    return path


@pytest.fixture
def sqlite_source(sqlite_template: Path, tmp_path: Path, django_db_blocker: Any) -> Iterator[Path]:
    """This process's ORM on a copy of the template, in autocommit: what a running lab's
    database looks like to ``manage.py backup`` (committed data, no test transaction)."""
    from django.db import connections
    from django.db.backends.sqlite3.base import DatabaseWrapper
    from django.db.utils import ConnectionHandler

    path = tmp_path / "source.sqlite3"
    shutil.copy(sqlite_template, path)
    base = dict(ConnectionHandler().settings["default"])
    base.update(NAME=str(path), ENGINE="django.db.backends.sqlite3", TEST={})
    # as h3lab.settings configures SQLite (the suite's own database may be PostgreSQL)
    base["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    previous = connections["default"]
    wrapper = DatabaseWrapper(base, alias="default")
    with django_db_blocker.unblock():
        connections["default"] = wrapper
        try:
            yield path
        finally:
            wrapper.close()
            connections["default"] = previous


def test_the_archive_holds_a_manifest_with_digests_and_key_fingerprints_but_no_key(
    sqlite_source: Path, settings: Any, tmp_path: Path
) -> None:
    key = key_spec()
    settings.H3LAB_MASTER_KEYS = key
    src = populate(tmp_path, key)

    text = backup(tmp_path / "b.tar", src)

    with tarfile.open(tmp_path / "b.tar") as tar:
        names = tar.getnames()
        f = tar.extractfile("h3lab-backup/manifest.json")
        assert f is not None
        manifest = json.load(f)
        raw = b"".join(
            tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        )
    assert "h3lab-backup/database.sqlite3" in names
    assert f"h3lab-backup/data/runs/{src.checkpoint}" in names
    assert all(name.startswith("h3lab-backup/") for name in names)
    (record,) = manifest["keys"]
    assert record["key_id"] == "k1" and record["current"] is True
    assert len(manifest["files"]) == len(names) - 1
    assert base64.b64decode(key.split(":")[1]) not in raw  # the key itself is nowhere
    assert key.split(":")[1].encode() not in raw
    assert "master keys are NOT in this archive" in text and record["fingerprint"] in text
    assert os.stat(tmp_path / "b.tar").st_mode & 0o077 == 0


@pytest.mark.e2e
def test_sqlite_backup_restores_on_a_fresh_machine_and_refuses_a_wrong_key(
    sqlite_source: Path, settings: Any, tmp_path: Path, test_broker: dict[str, str]
) -> None:
    key = key_spec()
    settings.H3LAB_MASTER_KEYS = key
    src = populate(tmp_path, key)
    backup(tmp_path / "b.tar", src)
    target = tmp_path / "new-machine"
    db_url = f"sqlite:///{target / 'h3lab.sqlite3'}"

    refused = restore(tmp_path / "b.tar", target, key_spec(), db_url, test_broker)
    assert refused.returncode != 0
    assert "refusing to restore: master key 'k1' does not match the key this backup's data" in (
        refused.stderr
    )
    assert not list((target / "data").rglob("*.bin"))
    keyless = restore(tmp_path / "b.tar", target, "", db_url, {**test_broker, "DEBUG": "1"})
    assert keyless.returncode != 0 and "no master key: put the deployment's key file" in (
        keyless.stderr
    )  # DEBUG does not generate a key that would open nothing
    assert not (target / "var" / "master.key").exists()

    done = restore(tmp_path / "b.tar", target, key, db_url, test_broker)
    with sqlite3.connect(target / "h3lab.sqlite3") as db:
        rows = db.execute(ARTIFACT_ROWS).fetchall()
        (task_id,) = db.execute(
            "SELECT celery_task_id FROM experiments_run WHERE id = ?", (src.queued_run,)
        ).fetchone()
    assert_restored(src, target, done, rows)
    assert task_id  # the queued run's job was sent again on the new machine

    again = restore(tmp_path / "b.tar", target, key, db_url, test_broker)
    assert again.returncode != 0 and "is not empty" in again.stderr


@pytest.fixture
def pg_source(private_pg: PrivatePostgres, django_db_blocker: Any) -> Iterator[str]:
    name = private_pg.migrated_database()
    with django_db_blocker.unblock(), use_database(private_pg.settings_dict(name)):
        yield name


@pytest.mark.e2e
def test_postgresql_backup_restores_with_pg_dump_into_a_new_database(
    pg_source: str,
    private_pg: PrivatePostgres,
    settings: Any,
    tmp_path: Path,
    test_broker: dict[str, str],
) -> None:
    if not Path(PG_BIN, "pg_dump").is_file():
        pytest.skip(f"no pg_dump in {PG_BIN}")
    settings.H3LAB_PG_BIN_DIR = PG_BIN
    key = key_spec()
    settings.H3LAB_MASTER_KEYS = key
    src = populate(tmp_path, key)
    backup(tmp_path / "b.tar", src)
    assert Run.objects.get(pk=src.queued_run).celery_task_id == ""
    private_pg.sql("CREATE DATABASE h3lab_restored")
    target = tmp_path / "new-machine"

    refused = restore(
        tmp_path / "b.tar", target, key_spec(), private_pg.url("h3lab_restored"), test_broker
    )
    assert refused.returncode != 0 and "refusing to restore" in refused.stderr
    done = restore(tmp_path / "b.tar", target, key, private_pg.url("h3lab_restored"), test_broker)

    rows = private_pg.sql(ARTIFACT_ROWS, "h3lab_restored")
    assert_restored(src, target, done, rows)
    ((task_id,),) = private_pg.sql(
        f"SELECT celery_task_id FROM experiments_run WHERE id = {src.queued_run}",  # noqa: S608
        "h3lab_restored",
    )
    assert task_id

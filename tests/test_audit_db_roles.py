"""The deployment's database roles (deploy/postgres-init.sql, compose.yaml): the app connects
as a role that is no superuser and owns nothing, so it can append to the audit log but cannot
truncate, rewrite or unprotect it. Played on a private PostgreSQL server set up as compose
sets up its own: init script as superuser, migrations as the owner role."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers import ROOT, PrivatePostgres, private_pg, use_database

__all__ = ["private_pg"]

COMPOSE = ROOT / "compose.yaml"
INIT_SQL = ROOT / "deploy" / "postgres-init.sql"


def test_compose_runs_the_app_as_the_app_role_and_migrations_as_the_owner() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    app_url = services["web"]["environment"]["DATABASE_URL"]
    assert app_url.startswith("postgres://h3lab_app:")
    for name in ("worker-cpu", "worker-gpu", "scheduler"):
        assert services[name]["environment"]["DATABASE_URL"] == app_url
    assert services["migrate"]["environment"]["DATABASE_URL"].startswith("postgres://h3lab_owner:")
    assert services["migrate"]["command"] == ["migrate"]
    assert services["web"]["environment"]["H3LAB_MIGRATE_ON_START"] == "0"
    after = services["web"]["depends_on"]["migrate"]["condition"]
    assert after == "service_completed_successfully"
    postgres = services["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] == "postgres"
    mounts = {m.split(":")[1]: ROOT / m.split(":")[0] for m in postgres["volumes"][1:]}
    assert mounts["/etc/h3lab/postgres-init.sql"] == ROOT / "./deploy/postgres-init.sql"
    init = mounts["/docker-entrypoint-initdb.d/10-h3lab-roles.sh"]
    assert init.is_file() and os.access(init, os.X_OK)
    assert "/etc/h3lab/postgres-init.sql" in init.read_text()


@pytest.fixture(scope="module")
def deployed(private_pg: PrivatePostgres) -> Iterator[tuple[PrivatePostgres, str]]:
    """A database set up as compose does: the init script, then migrations as the owner."""
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    dbname = "h3lab_roles"
    private_pg.sql(f"CREATE DATABASE {dbname}")
    subprocess.run(
        [psql, "-X", "-q", "-h", "127.0.0.1", "-p", str(private_pg.port), "-U", "postgres",
         "-d", "postgres", "-v", f"dbname={dbname}", "-v", "owner_password=o",
         "-v", "app_password=a", "-f", str(INIT_SQL)],
        check=True, capture_output=True,
    )  # fmt: skip
    owner_url = f"postgres://h3lab_owner@127.0.0.1:{private_pg.port}/{dbname}"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, check=True, capture_output=True, env={**os.environ, "DATABASE_URL": owner_url},
    )  # fmt: skip
    yield private_pg, dbname


def as_role(server: PrivatePostgres, dbname: str, role: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    url = f"postgres://{role}@127.0.0.1:{server.port}/{dbname}"
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql)
        return list(cur.fetchall()) if cur.description else []


@pytest.mark.e2e
@pytest.mark.django_db
def test_the_app_role_appends_but_cannot_truncate_rewrite_or_unprotect_the_log(
    deployed: tuple[PrivatePostgres, str], django_db_blocker: Any, settings: Any, tmp_path: Path
) -> None:
    import psycopg

    from disclosure import audit

    server, dbname = deployed
    app_db = {**server.settings_dict(dbname), "USER": "h3lab_app"}
    with django_db_blocker.unblock(), use_database(app_db):
        for i in range(3):
            audit.record(None, "test.event", None, new={"i": i})
        assert audit.verify() == (3, None)
        cp, _ = audit.write_checkpoint()
        assert cp.tree_size == 3
    app = "h3lab_app"
    assert as_role(server, dbname, app, "SELECT rolsuper, rolcreaterole FROM pg_roles "
                   "WHERE rolname = current_user") == [(False, False)]  # fmt: skip
    refused = [
        "TRUNCATE disclosure_auditentry",
        "TRUNCATE disclosure_audithead",
        "TRUNCATE experiments_project",  # TRUNCATE is granted on no table
        "DELETE FROM disclosure_auditentry",
        "UPDATE disclosure_auditentry SET action = 'x'",
        "DELETE FROM disclosure_audithead",
        "UPDATE disclosure_audithead SET last_id = 1",
        "ALTER TABLE disclosure_auditentry DISABLE TRIGGER ALL",
        "ALTER TABLE disclosure_audithead DISABLE TRIGGER disclosure_audithead_advance_only",
        "DROP TRIGGER disclosure_audit_no_truncate ON disclosure_auditentry",
        "DROP FUNCTION disclosure_audit_append_only() CASCADE",
        "CREATE OR REPLACE FUNCTION disclosure_audit_no_truncate() RETURNS trigger "
        "AS $$ BEGIN RETURN NULL; END $$ LANGUAGE plpgsql",
        "SET session_replication_role = replica",
    ]
    for sql in refused:
        with pytest.raises(psycopg.Error):
            as_role(server, dbname, app, sql)
    owners = as_role(
        server, dbname, "postgres",
        "SELECT DISTINCT proowner::regrole::text FROM pg_proc "
        "WHERE proname LIKE 'disclosure_audit%'",
    )  # fmt: skip
    assert owners == [("h3lab_owner",)]
    privileges = as_role(
        server, dbname, "postgres",
        "SELECT p, has_table_privilege('h3lab_app', 'disclosure_auditentry', p) FROM "
        "unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p",
    )  # fmt: skip
    assert dict(privileges) == {
        "SELECT": True, "INSERT": True, "UPDATE": False, "DELETE": False, "TRUNCATE": False
    }  # fmt: skip
    count = as_role(server, dbname, app, "SELECT count(*) FROM disclosure_auditentry")
    assert count == [(3,)]

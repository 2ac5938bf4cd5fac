"""Settings come from the environment: each case imports them in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json
from django.conf import settings
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "options": db.get("OPTIONS", {}),
    "test_name": db.get("TEST", {}).get("NAME"), "debug": settings.DEBUG,
    "broker": settings.CELERY_BROKER_URL, "backend": settings.CELERY_RESULT_BACKEND,
    "transport": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    "ssl_redirect": settings.SECURE_SSL_REDIRECT, "session_secure": settings.SESSION_COOKIE_SECURE,
    "hsts": settings.SECURE_HSTS_SECONDS, "hosts": settings.ALLOWED_HOSTS,
}, default=str))
"""
SERVER_VARS = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "CELERY_RESULT_BACKEND",
    "DEBUG",
    "SECRET_KEY",
    "DB_SERVER_SIDE_BINDING",
    "DB_PREPARE_THRESHOLD",
)


def settings_with(tmp_path: Path, **env: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    full = {**base, "DJANGO_SETTINGS_MODULE": "h3lab.settings", "H3LAB_VAR_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**full, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_the_embedded_default_needs_no_server(tmp_path: Path) -> None:
    s = settings_with(tmp_path)

    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["name"] == str(tmp_path / "h3lab.sqlite3")
    # Web, worker and beat share the file: WAL + a busy timeout; tests share it with workers.
    assert "journal_mode=WAL" in s["options"]["init_command"]
    assert s["options"]["timeout"] >= 10
    assert s["test_name"] == str(tmp_path / "test.sqlite3")
    assert s["broker"] == "filesystem://"
    assert s["transport"]["data_folder_in"] == str(tmp_path / "broker" / "queue")
    assert s["transport"]["polling_interval"] == 0.1
    assert s["backend"] == f"file://{tmp_path / 'results'}"
    assert s["debug"] is True


def test_environment_variables_switch_to_postgresql_and_redis(tmp_path: Path) -> None:
    s = settings_with(
        tmp_path,
        DATABASE_URL="postgres://lab:secret@db.internal:5433/h3lab",
        CELERY_BROKER_URL="redis://cache.internal:6379/0",
        CELERY_RESULT_BACKEND="redis://cache.internal:6379/1",
        H3LAB_BROKER_PREFIX="lab-a:",
    )

    assert s["engine"] == "django.db.backends.postgresql"
    assert s["name"] == "h3lab"
    assert s["broker"] == "redis://cache.internal:6379/0"
    assert s["backend"] == "redis://cache.internal:6379/1"
    assert s["transport"] == {"visibility_timeout": 3600, "global_keyprefix": "lab-a:"}


def test_debug_off_turns_on_the_transport_security_settings(tmp_path: Path) -> None:
    s = settings_with(
        tmp_path,
        DEBUG="0",
        SECRET_KEY="0123456789abcdefghijklmnopqrstuvwxyz-0123456789abcdefghij",
        H3LAB_MASTER_KEYS="k1:" + "A" * 43 + "=",
        ALLOWED_HOSTS="lab.example.org",
    )

    assert s["debug"] is False
    assert s["ssl_redirect"] is True
    assert s["session_secure"] is True
    assert s["hsts"] >= 31536000
    assert s["hosts"] == ["lab.example.org"]


def test_a_deployment_that_kept_the_development_key_fails_the_deploy_check(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    out = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "ERROR"],
        cwd=ROOT,
        env={**env, "DEBUG": "0", "H3LAB_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
    )

    assert out.returncode != 0
    assert "h3lab.E001" in out.stderr


def test_a_fresh_checkout_without_var_can_open_the_embedded_database(tmp_path: Path) -> None:
    var = tmp_path / "fresh" / "var"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["H3LAB_VAR_DIR"] = str(var)
    code = (
        "import django; django.setup(); "
        "from django.db import connection; connection.ensure_connection()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "DJANGO_SETTINGS_MODULE": "h3lab.settings"},
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert (var / "h3lab.sqlite3").exists()


def test_server_side_binding_is_opt_in_for_postgresql_and_prepares_statements(
    tmp_path: Path,
) -> None:
    url = "postgres://app:secret@db.internal:5432/h3lab"
    assert "server_side_binding" not in settings_with(tmp_path, DATABASE_URL=url)["options"]
    on = settings_with(tmp_path, DATABASE_URL=url, DB_SERVER_SIDE_BINDING="1")["options"]
    assert on["server_side_binding"] is True
    assert on["prepare_threshold"] == 2
    later = settings_with(
        tmp_path, DATABASE_URL=url, DB_SERVER_SIDE_BINDING="1", DB_PREPARE_THRESHOLD="5"
    )
    assert later["options"]["prepare_threshold"] == 5
    # SQLite has no such thing: the embedded default ignores the switch.
    embedded = settings_with(tmp_path, DB_SERVER_SIDE_BINDING="1")["options"]
    assert "server_side_binding" not in embedded and "prepare_threshold" not in embedded

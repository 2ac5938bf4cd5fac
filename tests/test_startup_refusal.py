"""With DEBUG off, no process starts on the public development key or without a master key.

Each case starts a fresh interpreter the way a deployment would (``manage.py``, the WSGI
module, the Celery app) and reads its exit status and message.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_settings import ROOT, SERVER_VARS

MASTER_KEYS = "k1:" + "A" * 43 + "="
GOOD_KEY = secrets.token_urlsafe(50)
ENTRY_POINTS = {
    "django.setup": [sys.executable, "-c", "import django; django.setup()"],
    "manage.py check": [sys.executable, "manage.py", "check"],
    "manage.py migrate": [sys.executable, "manage.py", "migrate", "--plan"],
    "gunicorn's wsgi": [sys.executable, "-c", "import h3lab.wsgi"],
    "celery": [
        sys.executable,
        "-c",
        "from h3lab.celery import app; app.loader.import_default_modules()",
    ],
}


def start(tmp_path: Path, command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    base.pop("H3LAB_MASTER_KEYS", None)
    base.pop("H3LAB_MASTER_KEY_FILE", None)
    full = {**base, "DJANGO_SETTINGS_MODULE": "h3lab.settings", "H3LAB_VAR_DIR": str(tmp_path)}
    return subprocess.run(
        command, cwd=ROOT, env={**full, "DEBUG": "0", **env}, capture_output=True, text=True
    )


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_debug_off_without_a_secret_key_refuses_to_start(tmp_path: Path, entry: str) -> None:
    done = start(tmp_path, ENTRY_POINTS[entry], H3LAB_MASTER_KEYS=MASTER_KEYS)

    assert done.returncode != 0
    assert "ImproperlyConfigured: Refusing to start with DEBUG=0" in done.stderr
    assert "SECRET_KEY is unset or the public development key" in done.stderr


@pytest.mark.parametrize(
    "key",
    [
        "short-but-not-empty",
        "x" * 64,
        "dev-insecure-h3lab-key-change-me-in-deployment-0123456789abcdef",
    ],
)
def test_a_weak_secret_key_is_refused(tmp_path: Path, key: str) -> None:
    done = start(
        tmp_path, ENTRY_POINTS["django.setup"], SECRET_KEY=key, H3LAB_MASTER_KEYS=MASTER_KEYS
    )

    assert done.returncode != 0
    assert "h3lab.E001" in done.stderr


def test_debug_off_without_a_master_key_refuses_to_start(tmp_path: Path) -> None:
    done = start(tmp_path, ENTRY_POINTS["django.setup"], SECRET_KEY=GOOD_KEY)

    assert done.returncode != 0
    assert "h3lab.E010: no master key" in done.stderr


def test_a_real_secret_key_and_master_key_start(tmp_path: Path) -> None:
    done = start(
        tmp_path,
        ENTRY_POINTS["django.setup"],
        SECRET_KEY=GOOD_KEY,
        H3LAB_MASTER_KEYS=MASTER_KEYS,
        ALLOWED_HOSTS="lab.example.org",
    )

    assert done.returncode == 0, done.stderr


def test_debug_on_keeps_the_zero_setup_default(tmp_path: Path) -> None:
    done = start(tmp_path, ENTRY_POINTS["django.setup"], DEBUG="1")

    assert done.returncode == 0, done.stderr

"""Where the master keys come from: the environment, a key file, or (development only) a key
file generated on first use.

The keyring is read from settings on every call (a few hundred bytes): a rotation that adds a
key to the environment, or a test that overrides the settings, is seen at once.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import time
from pathlib import Path

from django.conf import settings

from vault.crypto import KeyError_, Keyring, MasterKey

log = logging.getLogger(__name__)


def keyring() -> Keyring:
    """The configured master keys, the first being current. Raises :class:`KeyError_` naming
    what to set when none is configured."""
    spec = settings.H3LAB_MASTER_KEYS
    if spec:
        return Keyring.parse(spec)
    path = settings.H3LAB_MASTER_KEY_FILE
    if not path:
        raise KeyError_(
            "no master key configured: set H3LAB_MASTER_KEYS (id:base64 of 32 bytes) or "
            "H3LAB_MASTER_KEY_FILE"
        )
    file = Path(path)
    if not file.exists() and settings.H3LAB_MASTER_KEY_AUTOCREATE:
        _refuse_to_replace_a_registered_key(file)
        create_key_file(file)
        log.warning("generated a new development master key in %s (DEBUG is on)", file)
    try:
        return Keyring.parse(file.read_text())
    except FileNotFoundError:
        raise KeyError_(f"master key file {file} does not exist") from None


def _refuse_to_replace_a_registered_key(file: Path) -> None:
    """SECURITY: a development key is generated only for a database that records no key yet.
    A missing key file over a database with data encrypted under a registered key means the
    key was lost or moved (a restore without it, a deleted var/): a fresh key would encrypt
    new data under a key nothing else holds while every existing artifact stays unreadable."""
    from vault import registry  # registry reads the key store: import it only when needed

    if registry.has_records():
        raise KeyError_(
            f"master key file {file} is missing, and this database's data is encrypted under "
            "registered master keys (`manage.py keys status` lists their fingerprints); "
            "restore the key file, or set H3LAB_MASTER_KEYS, instead of generating a new key"
        )


def current() -> MasterKey:
    return keyring().current


def generate_key_line(key_id: str | None = None) -> str:
    key_id = key_id or time.strftime("mk-%Y%m%d-") + os.urandom(3).hex()
    return f"{key_id}:{base64.b64encode(os.urandom(32)).decode()}"


def create_key_file(path: Path) -> None:
    """Write a fresh master key to ``path`` with mode 0600, atomically: a concurrent process
    (web, worker) either creates it or reads the one the other created, never a partial file.

    SECURITY: the file is created 0600 before the key is written, and linked into place only
    complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(generate_key_line() + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: use theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def configured() -> bool:
    """Whether a master key is available without creating one (system check)."""
    if settings.H3LAB_MASTER_KEYS:
        return True
    path = settings.H3LAB_MASTER_KEY_FILE
    return bool(path) and (Path(path).is_file() or settings.H3LAB_MASTER_KEY_AUTOCREATE)

"""Refuse to start on the wrong master key: web (WSGI import), worker and beat (Celery signals),
and ``check --deploy`` compare the keys they hold with the fingerprints the database recorded
(:mod:`vault.registry`) before they take a request or a job.

Imported by ``h3lab/celery.py`` before Django is set up, so Django models are imported inside
the functions only. The first start of a deployment (no key recorded yet) records the keys it
holds, after trying each on data already stored under its id (:func:`probe`), and audits it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from celery.signals import beat_init, worker_init
from django.core.checks import CheckMessage, Error, Info, Tags, register

if TYPE_CHECKING:
    from vault.crypto import Keyring

log = logging.getLogger(__name__)

# Set to 0 only where the WSGI module is imported without serving (the test suite imports it
# to build an API schema before any database exists).
ENV_SWITCH = "H3LAB_CHECK_KEYS_AT_START"


class KeysRefused(Exception):
    """This process holds the wrong master keys, or none; the message says what to do."""


def keys_in_use() -> set[str]:
    """Every master key id something is wrapped under (artifacts, signing keys, partner
    copies)."""
    from disclosure.models import Export, SigningKey
    from experiments.models import Artifact

    ids = set(
        Artifact.objects.filter(encrypted=True, wrapped_key__isnull=False)
        .values_list("key_id", flat=True)
        .distinct()
    )
    ids |= set(SigningKey.objects.values_list("master_key_id", flat=True).distinct())
    ids |= set(
        Export.objects.filter(encrypted=True).values_list("master_key_id", flat=True).distinct()
    )
    return ids - {""}


def unheld(keyring: Keyring) -> list[str]:
    """Before any key is recorded: the key ids stored data needs that ``keyring`` lacks (a lost
    key file replaced by a fresh key must not be registered over the data)."""
    missing = sorted(keys_in_use() - {k.key_id for k in keyring.keys})
    if not missing:
        return []
    return [
        f"this database holds data encrypted under master key(s) {', '.join(missing)}, which "
        "this process does not hold; configure them (a generated development key file must be "
        "replaced by the original)"
    ]


def probe(key: Any) -> str | None:
    """Try ``key`` (a :class:`vault.crypto.MasterKey`) on one wrapped data key of each kind
    stored under its id: an artifact, a signing key, a partner copy. Why it fails, or None."""
    from disclosure.models import Export, SigningKey
    from experiments.models import Artifact
    from vault import crypto

    samples: list[tuple[str, bytes, bytes]] = []
    artifact = (
        Artifact.objects.filter(encrypted=True, key_id=key.key_id, wrapped_key__isnull=False)
        .only("pk", "run_id", "name", "wrapped_key")
        .first()
    )
    if artifact is not None:
        samples.append(
            (f"artifact {artifact.pk}", artifact.key_context, bytes(artifact.wrapped_key or b""))
        )
    signing = SigningKey.objects.filter(master_key_id=key.key_id).first()
    if signing is not None:
        samples.append(
            (
                f"signing key {signing.key_id}",
                signing.key_context,
                bytes(signing.wrapped_private_key),
            )
        )
    export = Export.objects.filter(
        encrypted=True, master_key_id=key.key_id, wrapped_key__isnull=False
    ).first()
    if export is not None:
        samples.append(
            (f"export {export.pk}", export.key_context, bytes(export.wrapped_key or b""))
        )
    for what, context, wrapped in samples:
        try:
            crypto.unwrap_key(key, wrapped, context=context)
        except crypto.DecryptionError:
            return (
                f"master key {key.key_id!r} does not open {what}, which is stored under that "
                "key id: it is not the key this deployment's data was encrypted with"
            )
    return None


def check_master_keys(process: str, *, keyring: Keyring | None = None) -> None:
    """Record the keys on a deployment's first start, then compare the process's keys (or
    ``keyring``); raise :class:`KeysRefused` naming every problem. Before ``migrate`` there
    is nothing to compare."""
    from disclosure import audit
    from vault import keystore, registry
    from vault.crypto import KeyError_

    try:
        ring = keyring or keystore.keyring()
        if not registry.records():
            missing = unheld(ring)
            if missing:
                raise registry.KeyMismatch(missing)
        reg = registry.register_first(ring, probe=probe)
        if reg.changed:
            audit.record(
                None,
                "masterkey.register",
                None,
                new={
                    "keys": {r.key_id: r.fingerprint for r in reg.added},
                    "current": reg.current,
                    "by": process,
                },
            )
            log.warning(
                "%s: registered master keys %s (current %s)",
                process,
                ", ".join(f"{r.key_id} ({r.fingerprint})" for r in reg.added),
                reg.current,
            )
        registry.verify(ring)
    except registry.NotMigrated:
        log.warning("%s: master keys not compared: the database is not migrated yet", process)
        return
    except (KeyError_, registry.KeyMismatch) as exc:
        raise KeysRefused(f"h3lab {process} refuses to start: {exc}") from None
    for key in ring.keys:
        log.info("%s: master key %s", process, key.key_id)


def _enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def check_web_start() -> None:
    """Called by ``h3lab/wsgi.py`` once the application is built (gunicorn workers and
    runserver import it before serving). An exception here fails the worker's boot, and
    gunicorn stops when a worker cannot boot."""
    if not _enabled():
        return
    from django.db import DatabaseError

    try:
        check_master_keys("web")
    except DatabaseError as exc:
        # The site answers 503 while the database is down; the worker, which encrypts, waits
        # for it instead (see _exit_unless_keys_fit). Nothing is read or written meanwhile.
        log.error("web: master keys not compared: the database is unavailable (%s)", exc)
    except KeysRefused as exc:
        from django.core.exceptions import ImproperlyConfigured

        log.critical("%s", exc)
        raise ImproperlyConfigured(str(exc)) from None


def _exit_unless_keys_fit(process: str, *, wait_s: float | None = None) -> None:
    """For Celery's signals: they log and swallow exceptions, so stop with SystemExit. A
    database that is down at start is waited for (``H3LAB_KEY_CHECK_WAIT_S``, 60 s), then the
    process stops too: it must not take a job with keys nobody compared."""
    if not _enabled():
        return
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()
    from django.db import DatabaseError, connection

    wait = float(os.environ.get("H3LAB_KEY_CHECK_WAIT_S", "60")) if wait_s is None else wait_s
    deadline = time.monotonic() + wait
    while True:
        try:
            check_master_keys(process)
            return
        except KeysRefused as exc:
            log.critical("%s", exc)
            raise SystemExit(str(exc)) from None
        except DatabaseError as exc:
            connection.close()
            if time.monotonic() >= deadline:
                msg = (
                    f"h3lab {process} refuses to start: could not reach the database to compare "
                    f"its master keys within {wait:.0f} s ({exc})"
                )
                log.critical("%s", msg)
                raise SystemExit(msg) from None
            log.warning("%s: database unavailable, master keys not compared yet", process)
            time.sleep(2)


@worker_init.connect(dispatch_uid="web.startup.worker_keys")
def _worker_keys(sender: Any = None, **kwargs: Any) -> None:
    _exit_unless_keys_fit("worker")


@beat_init.connect(dispatch_uid="web.startup.beat_keys")
def _beat_keys(sender: Any = None, **kwargs: Any) -> None:
    _exit_unless_keys_fit("beat")


@register(Tags.security, deploy=True)
def check_master_key_fingerprints(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """``check --deploy``: h3lab.E012 for a key that contradicts the database's records (or,
    before any is recorded, does not open data stored under its id). Read-only."""
    from django.db import DatabaseError

    from vault import keystore, registry
    from vault.crypto import KeyError_
    from vault.fingerprints import keyring_problems

    try:
        ring = keystore.keyring()
        records = registry.records()
    except (KeyError_, registry.NotMigrated):
        return []  # no key: h3lab.E010/E011 say so; no table: nothing recorded yet
    except DatabaseError as exc:
        # A deploy check may run where the database is not reachable (an image build, CI):
        # that is not a key fault. The web, worker and beat processes compare at start.
        return [
            Info(
                f"Could not compare the master keys with the database's records: {exc}",
                hint="web, worker and beat compare them at start and refuse a wrong key",
                id="h3lab.I012",
            )
        ]
    found = keyring_problems(ring, records)
    if not records:
        found = unheld(ring) + [p for p in map(probe, ring.keys) if p]
    return [
        Error(
            problem,
            hint="Configure the master keys this deployment was set up with "
            "(`manage.py keys status` lists their fingerprints).",
            id="h3lab.E012",
        )
        for problem in found
    ]

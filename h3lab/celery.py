"""The Celery application. Every task lives in :mod:`h3lab.jobs`, the one bridge between the ML
core and Django (``tests/test_architecture.py`` keeps it so)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_init
from kombu import Queue

from h3lab import broker

log = logging.getLogger(__name__)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "h3lab.settings")
broker.install()  # the embedded broker's messages appear whole (h3lab/broker.py)

app = Celery("h3lab")
app.config_from_object("django.conf:settings", namespace="CELERY")
# ``control`` carries only the reaper, consumed by a light worker that never trains (compose's
# worker-control), so no training can delay it (docs/operations.md#faults).
app.conf.task_queues = (Queue("cpu"), Queue("gpu"), Queue("default"), Queue("control"))
app.conf.task_routes = {
    "h3lab.jobs.reap_stale_runs": {"queue": "control"},
    "disclosure.tasks.*": {"queue": "default"},
}
app.autodiscover_tasks(["h3lab"], related_name="jobs")
import web.startup  # noqa: E402, F401  (worker and beat refuse to start on the wrong master key)


def _beat_schedule() -> dict[str, dict[str, object]]:
    from django.conf import settings

    return {
        "reap-stale-runs": {
            "task": "h3lab.jobs.reap_stale_runs",
            "schedule": settings.H3LAB_REAPER_INTERVAL_S,
            # A tick nobody took within one interval is dropped, not piled up: the next one
            # does the same work.
            "options": {"queue": "control", "expires": settings.H3LAB_REAPER_INTERVAL_S},
        },
        # Staged release: promote due releases after re-checking every gate. The disclosure
        # tasks live in h3lab.jobs under the names they had in disclosure.tasks.
        "release-due-findings": {
            "task": "disclosure.tasks.release_due_findings",
            "schedule": settings.H3LAB_RELEASE_CHECK_INTERVAL_S,
        },
        "warn-expiring-grants": {
            "task": "disclosure.tasks.warn_expiring_grants",
            "schedule": 3600.0,
        },
        # Signed checkpoints of the audit log's head, kept outside the database (issue 12).
        "write-audit-checkpoint": {
            "task": "disclosure.tasks.write_audit_checkpoint",
            "schedule": settings.H3LAB_AUDIT_CHECKPOINT_INTERVAL_S,
        },
    }


def ensure_embedded_dirs(conf: Any) -> None:
    """The filesystem broker and file result backend need their folders to exist; create them
    so a fresh clone works without a setup step."""
    if str(conf.broker_url or "").startswith("filesystem://"):
        opts = conf.broker_transport_options or {}
        for key in ("data_folder_in", "data_folder_out", "control_folder"):
            if opts.get(key):
                Path(opts[key]).mkdir(parents=True, exist_ok=True)
    backend = str(conf.result_backend or "")
    if backend.startswith("file://"):
        Path(backend.removeprefix("file://")).mkdir(parents=True, exist_ok=True)


@app.on_after_configure.connect
def _setup_periodic(sender: Celery, **kwargs: object) -> None:
    sender.conf.beat_schedule = {**_beat_schedule(), **(sender.conf.beat_schedule or {})}
    ensure_embedded_dirs(sender.conf)


def check_worker_keys() -> None:
    """A worker that cannot encrypt artifacts must not take jobs: it would train a run and
    lose the result. Raises SystemExit (non-zero) with a clear message when the master key is
    missing or unusable; called at worker start, before it consumes anything."""
    from vault import keystore

    try:
        keystore.keyring()
    except Exception as exc:
        message = (
            f"h3lab worker refuses to start: no usable master key ({type(exc).__name__}: {exc}). "
            "Set H3LAB_MASTER_KEYS or H3LAB_MASTER_KEY_FILE to the key the web app uses."
        )
        log.critical(message)  # without a configured log, logging's last resort prints it
        raise SystemExit(3) from exc


@worker_init.connect
def _worker_init(**kwargs: object) -> None:
    check_worker_keys()

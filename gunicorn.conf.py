"""Gunicorn settings for the web container (compose.yaml and the Dockerfile run
``gunicorn -c gunicorn.conf.py h3lab.wsgi``); every value comes from the environment.

Threaded workers (``gthread``): each worker process serves ``GUNICORN_THREADS`` requests at
once, and its main thread keeps telling the arbiter it is alive while they run. With the
``sync`` worker the arbiter killed any request that ran past ``--timeout`` (30 s), which cut
long downloads off mid-stream (a 64 MiB artifact stopped at 16.9 MB) and let three requests
stuck on a hung broker stall every worker. Here ``GUNICORN_TIMEOUT`` only catches a worker
whose main loop is stuck; a download streams for as long as the client reads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from h3lab.logformat import formatter_config


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw else default


bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = _int("WEB_CONCURRENCY", 3)
worker_class = "gthread"
threads = _int("GUNICORN_THREADS", 8)
timeout = _int("GUNICORN_TIMEOUT", 60)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)
# Recycle workers now and then (jittered so they do not all restart at once).
max_requests = _int("GUNICORN_MAX_REQUESTS", 2000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 200)
# The heartbeat file on tmpfs: a container's overlay filesystem can stall fsync-like writes.
if Path("/dev/shm").is_dir():  # noqa: S108 (a tmpfs, not a shared temporary file)
    worker_tmp_dir = "/dev/shm"  # noqa: S108
# X-Forwarded-* is trusted from these addresses (the reverse proxy in front).
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "INFO").lower()
# Gunicorn's own lines in the same shape as Django's: time, level, logger (JSON optional).
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": formatter_config(os.environ.get("LOG_FORMAT", "text")),
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "default",
            "stream": "ext://sys.stdout",
        },
    },
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["console"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}

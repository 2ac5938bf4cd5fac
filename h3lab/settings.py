"""Django settings, driven by the environment.

Defaults are the *embedded* single-machine setup: SQLite under ``var/`` and Celery on kombu's
``filesystem://`` broker, so ``make run`` needs no server. Deployment sets ``DATABASE_URL``
(PostgreSQL), ``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` (Redis), ``SECRET_KEY`` and
``DEBUG=0`` (see compose.yaml).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from h3lab.logformat import formatter_config

BASE_DIR = Path(__file__).resolve().parent.parent
# A checkout keeps templates/ and static/ beside manage.py; an installed wheel (pip install .)
# carries them inside the package (pyproject.toml's package-dir) and has no var/ of its own, so
# its state defaults to ./var in the working directory (deployments set H3LAB_VAR_DIR).
IN_CHECKOUT = (BASE_DIR / "manage.py").is_file()
SITE_DIR = BASE_DIR if IN_CHECKOUT else Path(__file__).resolve().parent / "_site"
WORK_DIR = BASE_DIR if IN_CHECKOUT else Path.cwd()
VAR_DIR = Path(os.environ.get("H3LAB_VAR_DIR", WORK_DIR / "var"))


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
# SECURITY: the development key only works with DEBUG on; system check h3lab.E001 refuses
# to start a DEBUG=0 deployment that kept it.
DEV_SECRET_KEY = "dev-insecure-h3lab-key-change-me-in-deployment-0123456789abcdef"  # noqa: S105
SECRET_KEY = env_str("SECRET_KEY", DEV_SECRET_KEY)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "guardian",
    "h3lab.apps.H3LabConfig",
    "vault",  # master-key fingerprints (vault.models); below both apps
    "experiments",
    "disclosure",
    "web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "disclosure.middleware.ActingUserMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "h3lab.urls"
WSGI_APPLICATION = "h3lab.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [SITE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'h3lab.sqlite3'}"),
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0),
        # A kept connection (DB_CONN_MAX_AGE > 0) is checked before a request reuses it, so one
        # broken by a database restart is replaced instead of failing that request.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite creates the file but not its folder: a fresh clone has no var/ yet.
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Web server, worker and scheduler share one SQLite file: WAL lets readers proceed while a
    # worker writes progress, and the busy timeout turns lock contention into a short wait.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
    }
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}

if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A server that does not answer fails a connection attempt in seconds, not minutes: pages
    # then answer 503 (web/errors.py) and /readyz reports the database down.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault(
        "connect_timeout", env_int("DB_CONNECT_TIMEOUT_S", 5)
    )
    # Server-side parameter binding lets psycopg prepare a statement once per connection after
    # DB_PREPARE_THRESHOLD executions; with client-side binding (Django's default) every
    # request's statement carries its own literals and PostgreSQL plans it afresh (the finding
    # list's two statements spend about as long in the planner as in execution). Not behind a
    # pooler in transaction mode, which cannot keep a connection's prepared statements.
    if env_bool("DB_SERVER_SIDE_BINDING", False):
        DATABASES["default"]["OPTIONS"]["server_side_binding"] = True
        DATABASES["default"]["OPTIONS"]["prepare_threshold"] = env_int("DB_PREPARE_THRESHOLD", 2)
# Retry-After of the 503 a database outage answers (web/errors.py).
H3LAB_DB_RETRY_AFTER_S = env_int("H3LAB_DB_RETRY_AFTER_S", 30)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: anonymous users get no object permissions
GUARDIAN_RAISE_403 = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [SITE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(WORK_DIR / "staticfiles")))


def stored_file_backends(environ: dict[str, str] | os._Environ[str]) -> dict[str, dict[str, Any]]:
    """``STORAGES["artifacts"]`` and ``STORAGES["exports"]``: folders under ``H3LAB_DATA_DIR``
    by default; with ``H3LAB_STORAGE=s3``, prefixes ``artifacts/`` and ``exports/`` in the bucket
    ``AWS_STORAGE_BUCKET_NAME`` at ``AWS_S3_ENDPOINT_URL`` (any S3-compatible server; keys from
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` or boto3's usual sources, region from
    ``AWS_S3_REGION_NAME``). Bytes are encrypted by h3lab before they are stored either way."""
    kind = environ.get("H3LAB_STORAGE", "filesystem")
    if kind == "filesystem":
        return {
            alias: {
                "BACKEND": "experiments.storage_backends.DataDirStorage",
                "OPTIONS": {"setting": setting},
            }
            for alias, setting in (("artifacts", "ARTIFACTS_DIR"), ("exports", "EXPORTS_DIR"))
        }
    if kind != "s3":
        raise ImproperlyConfigured(f"H3LAB_STORAGE must be filesystem or s3, not {kind!r}")
    bucket = environ.get("AWS_STORAGE_BUCKET_NAME", "")
    if not bucket:
        raise ImproperlyConfigured("H3LAB_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME")
    from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped,import-not-found,unused-ignore]

    mib = 1 << 20
    part = int(environ.get("H3LAB_S3_PART_MB", "8")) * mib
    threads = int(environ.get("H3LAB_S3_CONCURRENCY", "2"))
    transfer = TransferConfig(
        multipart_threshold=part, multipart_chunksize=part, max_concurrency=threads
    )
    # s3transfer otherwise reads up to 10 parts ahead from a non-seekable stream (ours is a
    # pipe fed by the encryptor): an upload then holds about (2 x threads) parts in memory.
    transfer.max_in_memory_upload_chunks = threads
    options: dict[str, Any] = {
        "bucket_name": bucket,
        "endpoint_url": environ.get("AWS_S3_ENDPOINT_URL") or None,
        "region_name": environ.get("AWS_S3_REGION_NAME") or None,
        "access_key": environ.get("AWS_ACCESS_KEY_ID") or None,
        "secret_key": environ.get("AWS_SECRET_ACCESS_KEY") or None,
        "file_overwrite": False,  # a name in use gets a fresh one, as on the filesystem
        "default_acl": None,
        "querystring_auth": True,
        # Multipart above one part; memory bounded by the part size, whatever the file's size.
        "transfer_config": transfer,
    }
    return {
        alias: {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {**options, "location": alias},
        }
        for alias in ("artifacts", "exports")
    }


H3LAB_STORAGE = env_str("H3LAB_STORAGE", "filesystem")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    **stored_file_backends(os.environ),
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
# Artifacts and run working directories. Never served directly: every download goes through
# a permission-checked view (SECURITY: no MEDIA_URL route exists).
MEDIA_ROOT = Path(env_str("H3LAB_DATA_DIR", str(VAR_DIR / "data")))
RUNS_DIR = MEDIA_ROOT / "runs"
ARTIFACTS_DIR = MEDIA_ROOT / "artifacts"

# Mail: EMAIL_URL (smtp://user:password@host:587 with STARTTLS, smtps://…:465 with implicit
# TLS, smtp+plain://… without TLS, console:// to print mail) or EMAIL_HOST, EMAIL_PORT,
# EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS / EMAIL_USE_SSL. With neither, mail is
# appended to EMAIL_FILE_PATH (var/mail.log; the embedded default, so it never floods the
# terminal of `make run`).
MAIL_LOG_BACKEND = "h3lab.maillog.MailLogBackend"


def email_settings(environ: dict[str, str]) -> dict[str, Any]:
    """Django's EMAIL_* settings from ``EMAIL_URL`` or the separate variables."""
    url = environ.get("EMAIL_URL", "")
    if url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "console":
            return {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}
        if scheme not in ("smtp", "smtps", "smtp+tls", "smtp+plain"):
            raise ImproperlyConfigured(
                f"EMAIL_URL: unknown scheme {scheme!r} (smtp, smtps, smtp+plain, console)"
            )
        implicit_tls = scheme == "smtps"
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": parts.hostname or "localhost",
            "EMAIL_PORT": parts.port or (465 if implicit_tls else 587),
            "EMAIL_HOST_USER": unquote(parts.username or ""),
            "EMAIL_HOST_PASSWORD": unquote(parts.password or ""),
            "EMAIL_USE_SSL": implicit_tls,
            "EMAIL_USE_TLS": scheme in ("smtp", "smtp+tls"),
        }
    if environ.get("EMAIL_HOST"):
        use_ssl = environ.get("EMAIL_USE_SSL", "").lower() in ("1", "true", "yes", "on")
        tls_raw = environ.get("EMAIL_USE_TLS", "")
        use_tls = (tls_raw.lower() in ("1", "true", "yes", "on")) if tls_raw else not use_ssl
        return {
            "EMAIL_BACKEND": environ.get(
                "EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend"
            ),
            "EMAIL_HOST": environ["EMAIL_HOST"],
            "EMAIL_PORT": int(environ.get("EMAIL_PORT") or (465 if use_ssl else 587)),
            "EMAIL_HOST_USER": environ.get("EMAIL_HOST_USER", ""),
            "EMAIL_HOST_PASSWORD": environ.get("EMAIL_HOST_PASSWORD", ""),
            "EMAIL_USE_SSL": use_ssl,
            "EMAIL_USE_TLS": use_tls,
        }
    return {"EMAIL_BACKEND": environ.get("EMAIL_BACKEND", MAIL_LOG_BACKEND)}


_email = email_settings(dict(os.environ))
EMAIL_BACKEND: str = _email["EMAIL_BACKEND"]
EMAIL_HOST: str = _email.get("EMAIL_HOST", "localhost")
EMAIL_PORT: int = _email.get("EMAIL_PORT", 25)
EMAIL_HOST_USER: str = _email.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD: str = _email.get("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS: bool = _email.get("EMAIL_USE_TLS", False)
EMAIL_USE_SSL: bool = _email.get("EMAIL_USE_SSL", False)
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(VAR_DIR / "mail.log"))
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)  # seconds; a dead mail server must not hang a page
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "h3lab <noreply@h3lab.localhost>")
SERVER_EMAIL = env_str("SERVER_EMAIL", DEFAULT_FROM_EMAIL)

# --- security hardening (production: DEBUG=0) ---
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env_bool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# --- Celery ---
BROKER_DIR = Path(env_str("H3LAB_BROKER_DIR", str(VAR_DIR / "broker")))
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", f"file://{VAR_DIR / 'results'}")
if CELERY_BROKER_URL.startswith("filesystem://"):
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, object] = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "control_folder": str(BROKER_DIR / "control"),
        "polling_interval": 0.1,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    # Several labs (or test sessions) can share one Redis: every key gets this prefix.
    if env_str("H3LAB_BROKER_PREFIX", ""):
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = env_str("H3LAB_BROKER_PREFIX", "")
# A job sent from a web request (or the reaper) waits at most about twice this for the broker;
# past that the row stays queued, the user is told, and the reaper sends it again
# (experiments/dispatch.py).
H3LAB_BROKER_SEND_TIMEOUT_S = float(env_str("H3LAB_BROKER_SEND_TIMEOUT_S", "2"))
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Each run trains in its own spawned, memory-capped child process (h3lab/isolation.py). The
# prefork pool's processes are daemonic and may not start children, so workers run tasks in
# a thread of the worker process instead, which also keeps it answering pings while it trains.
CELERY_WORKER_POOL = env_str("CELERY_WORKER_POOL", "threads")
CELERY_TASK_DEFAULT_QUEUE = "cpu"
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

# Run liveness: a worker writes a heartbeat every H3LAB_HEARTBEAT_S seconds; the reaper treats a
# running run whose heartbeat is older than H3LAB_HEARTBEAT_TIMEOUT_S as lost and requeues it
# (up to H3LAB_MAX_ATTEMPTS attempts) or fails it.
H3LAB_HEARTBEAT_S = float(env_str("H3LAB_HEARTBEAT_S", "3"))
H3LAB_HEARTBEAT_TIMEOUT_S = float(env_str("H3LAB_HEARTBEAT_TIMEOUT_S", "30"))
H3LAB_REAPER_INTERVAL_S = float(env_str("H3LAB_REAPER_INTERVAL_S", "10"))
H3LAB_MAX_ATTEMPTS = env_int("H3LAB_MAX_ATTEMPTS", 3)
H3LAB_CANCEL_POLL_S = float(env_str("H3LAB_CANCEL_POLL_S", "1"))
# Faults (docs/operations.md#faults). A database or broker error inside a job is retried with
# exponential backoff for up to H3LAB_TRANSIENT_RETRY_S seconds before the attempt is left to the
# reaper (never failed). A queued run that no worker started within H3LAB_REQUEUE_AFTER_S seconds
# of being sent (its message may have been lost: Redis restarted empty) is sent again, then after
# twice that, and so on up to 8x, whatever its task id: duplicate deliveries are harmless.
H3LAB_TRANSIENT_RETRY_S = float(env_str("H3LAB_TRANSIENT_RETRY_S", "60"))
H3LAB_REQUEUE_AFTER_S = float(env_str("H3LAB_REQUEUE_AFTER_S", "300"))

# --- Run resource limits --------------------------------------------------------------------
# What one run may ask of its queue's workers, checked against h3lab.estimate (exact parameters,
# conservative peak training memory, FLOPs of all its steps) before a run is accepted, for the
# web form and the API alike (experiments.actions.runs.check_submit_run). "cpu" and "default"
# fit one 2-core/24 GiB host; "gpu" one 80 GB GPU. Env: H3LAB_<QUEUE>_MAX_PARAMS,
# H3LAB_<QUEUE>_MAX_MEMORY_MB, H3LAB_<QUEUE>_MAX_GFLOP.
_QUEUE_LIMIT_DEFAULTS = {
    # queue: (parameters, estimated peak MiB, GFLOP for the whole run)
    "cpu": (200_000_000, 4 * 1024, 2_000_000),
    "default": (200_000_000, 4 * 1024, 2_000_000),
    "gpu": (4_000_000_000, 70 * 1024, 10_000_000_000),
}
H3LAB_QUEUE_LIMITS: dict[str, dict[str, int]] = {
    queue: {
        "max_params": env_int(f"H3LAB_{queue.upper()}_MAX_PARAMS", params),
        "max_memory_mb": env_int(f"H3LAB_{queue.upper()}_MAX_MEMORY_MB", memory_mb),
        "max_gflop": env_int(f"H3LAB_{queue.upper()}_MAX_GFLOP", gflop),
    }
    for queue, (params, memory_mb, gflop) in _QUEUE_LIMIT_DEFAULTS.items()
}
# Each run trains in a child process of the worker whose address space is capped at this many
# MiB above what the Python and torch runtime already map (RLIMIT_AS), so a run that outgrows
# it fails on its own and the worker goes on. 0 = no cap: the default on "gpu", because CUDA
# reserves far more virtual address space than it uses and would not start under a cap.
H3LAB_RUN_MEMORY_LIMIT_MB: dict[str, int] = {
    "cpu": env_int("H3LAB_RUN_MEMORY_LIMIT_MB", 6 * 1024),
    "default": env_int("H3LAB_RUN_MEMORY_LIMIT_MB", 6 * 1024),
    "gpu": env_int("H3LAB_GPU_RUN_MEMORY_LIMIT_MB", 0),
}
# A project's backlog: submissions are refused while it has this many runs queued, or running.
H3LAB_MAX_QUEUED_RUNS_PER_PROJECT = env_int("H3LAB_MAX_QUEUED_RUNS_PER_PROJECT", 20)
H3LAB_MAX_RUNNING_RUNS_PER_PROJECT = env_int("H3LAB_MAX_RUNNING_RUNS_PER_PROJECT", 4)

# Every line carries time (UTC), level and logger; LOG_FORMAT=json writes one JSON object a
# line (h3lab/logformat.py; gunicorn.conf.py uses the same formats for gunicorn's own lines).
LOG_FORMAT = env_str("LOG_FORMAT", "text").strip().lower()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": formatter_config(LOG_FORMAT),
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "default"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- disclosure ---
# Role groups (created by disclosure's data migration). Which group is cleared for which tier is
# data (disclosure.GroupClearance), edited in the admin.
H3LAB_REVIEW_BOARD_GROUP = env_str("H3LAB_REVIEW_BOARD_GROUP", "review-board")
H3LAB_RELEASE_MANAGERS_GROUP = env_str("H3LAB_RELEASE_MANAGERS_GROUP", "release-managers")
# The scheduler re-checks and promotes due releases this often; grants are warned this many days
# before they lapse.
H3LAB_RELEASE_CHECK_INTERVAL_S = float(env_str("H3LAB_RELEASE_CHECK_INTERVAL_S", "60"))
H3LAB_GRANT_WARNING_DAYS = env_int("H3LAB_GRANT_WARNING_DAYS", 7)
# Separation of duties: no grant lasts longer than this; an open objection is cleared by its
# author or by this many other board members (0: the release rule's approvals_required).
H3LAB_GRANT_MAX_DAYS = env_int("H3LAB_GRANT_MAX_DAYS", 365)
H3LAB_OBJECTION_QUORUM = env_int("H3LAB_OBJECTION_QUORUM", 0)
# Absolute links in notification emails.
H3LAB_SITE_URL = env_str("H3LAB_SITE_URL", "http://127.0.0.1:8000")

# --- encryption at rest and signing (issue 5) ---
# Master keys wrap every restricted artifact's data key and every signing key. Either
# H3LAB_MASTER_KEYS ("id:base64,id:base64", the first is current; older ids stay to read what
# they wrapped until `manage.py rotate_master_key` re-wraps it) or H3LAB_MASTER_KEY_FILE (same
# format, one key a line). SECURITY: keep them out of the database and its backups. With DEBUG
# on and neither set, a key file is generated under var/ on first use (0600) so `make run`
# needs no setup; with DEBUG off a missing key fails system check h3lab.E010.
H3LAB_MASTER_KEYS = env_str("H3LAB_MASTER_KEYS", "")
H3LAB_MASTER_KEY_FILE = env_str(
    "H3LAB_MASTER_KEY_FILE", str(VAR_DIR / "master.key") if DEBUG and not H3LAB_MASTER_KEYS else ""
)
H3LAB_MASTER_KEY_AUTOCREATE = DEBUG and not os.environ.get("H3LAB_MASTER_KEY_FILE")
# `manage.py backup`/`restore` on PostgreSQL run pg_dump/pg_restore from this folder (else
# PATH); their major version must be the server's or newer (docs/operations.md, Backup).
H3LAB_PG_BIN_DIR = env_str("H3LAB_PG_BIN_DIR", "")
# Built publication bundles (public ones in the clear, partner copies encrypted).
EXPORTS_DIR = MEDIA_ROOT / "exports"
H3LAB_BUNDLE_LICENSE = env_str(
    "H3LAB_BUNDLE_LICENSE", "https://creativecommons.org/licenses/by/4.0/"
)
H3LAB_PUBLISHER = env_str("H3LAB_PUBLISHER", "h3lab")

# --- audit log checkpoints (issue 12) ---
# The audit chain's head is signed periodically (Ed25519) with a key kept OUT of the database,
# so a database superuser cannot rewrite history unnoticed (see docs/operations.md, "Audit log
# integrity"). H3LAB_AUDIT_KEY: base64 of a 32-byte Ed25519 seed; else H3LAB_AUDIT_KEY_FILE
# (PKCS#8 PEM, created 0600 on first use). H3LAB_AUDIT_PUBLIC_KEYS: extra PEM files (comma
# separated) whose checkpoints verify, e.g. the key before a rotation.
H3LAB_AUDIT_KEY = env_str("H3LAB_AUDIT_KEY", "")
H3LAB_AUDIT_KEY_FILE = env_str("H3LAB_AUDIT_KEY_FILE", str(VAR_DIR / "audit-checkpoint.key"))
H3LAB_AUDIT_PUBLIC_KEYS = env_list("H3LAB_AUDIT_PUBLIC_KEYS", [])
H3LAB_AUDIT_CHECKPOINT_DIR = Path(
    env_str("H3LAB_AUDIT_CHECKPOINT_DIR", str(MEDIA_ROOT / "audit-checkpoints"))
)
H3LAB_AUDIT_CHECKPOINT_INTERVAL_S = float(env_str("H3LAB_AUDIT_CHECKPOINT_INTERVAL_S", "3600"))

# The default cache backs API rate limits. Set CACHE_URL (redis://…) in deployment so every
# web process counts against the same limits; the embedded default is per process.
CACHE_URL = env_str("CACHE_URL", "")
# A Redis that is down or hung must not take the site with it: web.cache.ResilientRedisCache
# gives each operation CACHE_TIMEOUT_S and falls back to a per-process cache for
# CACHE_FALLBACK_RETRY_S after an error (rate limits then count per process).
CACHE_TIMEOUT_S = float(env_str("CACHE_TIMEOUT_S", "0.5"))
CACHES = {
    "default": (
        {
            "BACKEND": "web.cache.ResilientRedisCache",
            "LOCATION": CACHE_URL,
            "OPTIONS": {
                "socket_timeout": CACHE_TIMEOUT_S,
                "socket_connect_timeout": CACHE_TIMEOUT_S,
                "FALLBACK_RETRY_S": float(env_str("CACHE_FALLBACK_RETRY_S", "10")),
            },
        }
        if CACHE_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

# --- API (api/: REST framework, personal tokens, OpenAPI schema) -------------------------------
INSTALLED_APPS += ["rest_framework", "drf_spectacular", "drf_spectacular_sidecar", "api"]
# Requests per token (token-authenticated) and per client address (anonymous readers of
# public findings). Counters live in the default cache: per process with the built-in local
# memory cache, shared once CACHES points at Redis.
H3LAB_API_RATES = {
    "token": env_str("H3LAB_API_TOKEN_RATE", "600/minute"),
    "anon": env_str("H3LAB_API_ANON_RATE", "120/minute"),
}
H3LAB_API_TOKEN_MAX_DAYS = env_int("H3LAB_API_TOKEN_MAX_DAYS", 365)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",  # browser; enforces CSRF
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "api.auth.HasScope",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["api.auth.TokenRateThrottle", "api.auth.AnonRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "api.parsers.JSONParser",  # depth-bounded, NUL-refusing (see the hardening block)
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.Pagination",
    "DEFAULT_SCHEMA_CLASS": "api.schema.ApiSchema",
    "EXCEPTION_HANDLER": "api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "h3lab API",
    "DESCRIPTION": (
        "Submit and follow training runs, read metrics and artifacts, record findings and "
        "take them through review. Authenticate with `Authorization: Bearer <token>` (create "
        "tokens at /api/tokens/). Objects you may not see answer 404, exactly like missing ones."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "experiments.models.RunStatus",
        "FindingStatusEnum": "experiments.models.FindingStatus",
        "TierEnum": "experiments.models.Tier",
        "ArtifactKindEnum": "experiments.models.ArtifactKind",
        "VoteKindEnum": "disclosure.models.VoteKind",
        "ExportKindEnum": "disclosure.models.ExportKind",
        "RunKindEnum": "experiments.models.RunKind",
        "AnalysisKindEnum": "experiments.models.ANALYSIS_KINDS",
    },
}

# --- hardening: security headers, hostile input, refusal to start unsafely ---------------------
# Every HTML page carries a strict Content-Security-Policy and every response a
# Permissions-Policy (web/middleware.py; Referrer-Policy is SECURE_REFERRER_POLICY above); a NUL
# byte in a query or form parameter answers 400 before any view runs. API JSON bodies are
# depth-bounded by api.parsers.JSONParser; sizes, ids, seeds and dates by experiments/inputs.py.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "web.middleware.SecurityHeadersMiddleware",
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("web.middleware.SecurityHeadersMiddleware") + 1,
    "web.middleware.RejectNulBytesMiddleware",
)
# /healthz (liveness) and /readyz (database, broker, cache, storage; each within
# H3LAB_READY_TIMEOUT_S) are answered first: no host check, HTTPS redirect or session
# (web/health.py).
MIDDLEWARE.insert(0, "web.health.HealthCheckMiddleware")
H3LAB_READY_TIMEOUT_S = float(env_str("H3LAB_READY_TIMEOUT_S", "2"))
# A view failing because the database is down answers 503, not 500 (web/errors.py).
MIDDLEWARE.insert(
    MIDDLEWARE.index("web.middleware.RejectNulBytesMiddleware") + 1,
    "web.middleware.DatabaseUnavailableMiddleware",
)

# SECURITY: with DEBUG off the process refuses to start, whatever starts it (runserver, migrate,
# gunicorn, a Celery worker or beat all import these settings), without a real SECRET_KEY and
# a master key: the development key is public, so sessions, CSRF tokens and password-reset links
# signed with it could be forged. The reasons carry the ids of system checks h3lab.E001/E010,
# which report the same faults when settings are changed after import; check h3lab.E011
# validates the key material itself.
MIN_SECRET_KEY_CHARS = 50


def startup_refusals(*, debug: bool, secret_key: str, master_keys: str, key_file: str) -> list[str]:
    """Why a process with these settings must not start (empty: it may)."""
    if debug:
        return []
    reasons = []
    if secret_key == DEV_SECRET_KEY or secret_key.startswith("django-insecure"):
        reasons.append("h3lab.E001: SECRET_KEY is unset or the public development key")
    elif len(secret_key) < MIN_SECRET_KEY_CHARS or len(set(secret_key)) < 5:
        reasons.append(
            f"h3lab.E001: SECRET_KEY must be at least {MIN_SECRET_KEY_CHARS} random characters"
        )
    if not master_keys and not key_file:
        reasons.append("h3lab.E010: no master key (H3LAB_MASTER_KEYS or H3LAB_MASTER_KEY_FILE)")
    return reasons


_refusals = startup_refusals(
    debug=DEBUG,
    secret_key=SECRET_KEY,
    master_keys=H3LAB_MASTER_KEYS,
    key_file=os.environ.get("H3LAB_MASTER_KEY_FILE", ""),
)
if _refusals:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "Refusing to start with DEBUG=0: "
        + "; ".join(_refusals)
        + ". Generate a key with `python -c 'import secrets; print(secrets.token_urlsafe(50))'` "
        "and a master key with `python -c 'import base64, os; "
        'print("k1:" + base64.b64encode(os.urandom(32)).decode())\'` (see README, Deployment).'
    )

# --- accounts: login throttling, second factor, password hashing -------------------------------
# Kept in one block. Lockouts (django-axes) count failed logins per username *and* client
# address; `manage.py axes_reset_username <name>` (or `axes_reset`) lifts one early. A second
# factor (django-otp: TOTP, with one-time recovery codes) is required of everyone whose
# account can see or release more than their own team's work: see
# disclosure.policy.requires_second_factor and web.accounts.SecondFactorMiddleware.
INSTALLED_APPS += [
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
]
# OTPMiddleware marks request.user as verified; the second-factor gate must see that, and the
# lockout middleware must wrap the login view's response, so all three follow authentication.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
    "django_otp.middleware.OTPMiddleware",
)
MIDDLEWARE.insert(
    MIDDLEWARE.index("django_otp.middleware.OTPMiddleware") + 1,
    "web.accounts.SecondFactorMiddleware",
)
MIDDLEWARE.append("axes.middleware.AxesMiddleware")
# Axes first: it refuses a locked-out login before any password is checked.
AUTHENTICATION_BACKENDS.insert(0, "axes.backends.AxesStandaloneBackend")
H3LAB_LOGIN_FAILURE_LIMIT = env_int("H3LAB_LOGIN_FAILURE_LIMIT", 5)
H3LAB_LOGIN_COOLOFF_MINUTES = env_int("H3LAB_LOGIN_COOLOFF_MINUTES", 15)
AXES_FAILURE_LIMIT = H3LAB_LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(minutes=H3LAB_LOGIN_COOLOFF_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The lockout answer is the login page with a message, the same for every username.
AXES_LOCKOUT_CALLABLE = "web.accounts.lockout_response"
# SECURITY: the client address is REMOTE_ADDR, as in the audit log; X-Forwarded-For is
# client-controlled and would let an attacker pick a fresh address per guess.
AXES_CLIENT_IP_CALLABLE = "disclosure.audit.client_ip"
OTP_TOTP_ISSUER = env_str("OTP_TOTP_ISSUER", "h3lab")
H3LAB_RECOVERY_CODES = 10
# Argon2 hashes new passwords; older PBKDF2 hashes still verify and are re-hashed with Argon2
# at the user's next login.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
    "django.contrib.auth.hashers.ScryptPasswordHasher",
]
AUTH_PASSWORD_VALIDATORS += [
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT", 3 * 3600)

# Performance (docs/benchmarks.md, "Web under load"). A user's roles are read once per request
# and memoized for that request only (disclosure.policy.roles). Server-Timing headers (time in
# Django and in SQL, query count) are for the load benchmark only: off unless asked for.
H3LAB_SERVER_TIMING = env_bool("H3LAB_SERVER_TIMING", False)
# After the health check, which stays first (it answers before anything else runs).
_AFTER_HEALTH = MIDDLEWARE.index("web.health.HealthCheckMiddleware") + 1
MIDDLEWARE.insert(_AFTER_HEALTH, "web.middleware.ServerTimingMiddleware")
MIDDLEWARE.insert(_AFTER_HEALTH + 1, "disclosure.middleware.RolesOncePerRequestMiddleware")

"""Serving settings (issue 12, item 7): gunicorn's configuration, log line formats, mail from
the environment, and compose using them. The streaming behaviour itself is tested against a
real gunicorn in tests/e2e/test_gunicorn_streaming.py."""

from __future__ import annotations

import json
import logging
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured

from h3lab.logformat import JsonFormatter, UTCFormatter, formatter_config
from h3lab.settings import email_settings

ROOT = Path(__file__).resolve().parents[1]


def gunicorn_config(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in ("WEB_CONCURRENCY", "GUNICORN_THREADS", "GUNICORN_TIMEOUT", "LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_gunicorn_runs_threaded_workers_configured_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    default = gunicorn_config(monkeypatch)
    assert (default["worker_class"], default["threads"], default["workers"]) == ("gthread", 8, 3)
    assert default["timeout"] == 60 and default["accesslog"] == "-"
    tuned = gunicorn_config(
        monkeypatch, WEB_CONCURRENCY="5", GUNICORN_THREADS="4", GUNICORN_TIMEOUT="7"
    )
    assert (tuned["workers"], tuned["threads"], tuned["timeout"]) == (5, 4, 7)


def test_gunicorn_logs_in_the_chosen_format(monkeypatch: pytest.MonkeyPatch) -> None:
    text = gunicorn_config(monkeypatch)["logconfig_dict"]
    assert text["formatters"]["default"]["()"] == "h3lab.logformat.UTCFormatter"
    as_json = gunicorn_config(monkeypatch, LOG_FORMAT="json")["logconfig_dict"]
    assert as_json["formatters"]["default"]["()"] == "h3lab.logformat.JsonFormatter"
    assert as_json["loggers"]["gunicorn.access"]["handlers"] == ["console"]


def record(msg: str = "run %s queued", exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord(
        "experiments.dispatch", logging.WARNING, __file__, 1, msg, (7,), exc_info
    )
    rec.created = 1764667694.25  # 2025-12-02T09:28:14.250Z
    rec.msecs = 250.0
    return rec


def test_text_log_lines_carry_utc_time_level_and_logger() -> None:
    line = UTCFormatter().format(record())
    assert line == "2025-12-02T09:28:14.250Z WARNING experiments.dispatch run 7 queued"


def test_json_log_lines_are_one_object_each() -> None:
    entry = json.loads(JsonFormatter().format(record(exc=True)))
    assert entry["time"] == "2025-12-02T09:28:14.250Z"
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "WARNING",
        "experiments.dispatch",
        "run 7 queued",
    )
    assert "ValueError: boom" in entry["exc_info"]
    assert "\n" not in JsonFormatter().format(record(exc=True)), "one line per entry"


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        formatter_config("xml")


# --- mail ------------------------------------------------------------------------------------


def test_mail_from_an_smtp_url_uses_starttls_and_decodes_the_password() -> None:
    mail = email_settings({"EMAIL_URL": "smtp://lab%40example.org:p%2Fss%3Aw@mail.example.org"})
    assert mail == {
        "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
        "EMAIL_HOST": "mail.example.org",
        "EMAIL_PORT": 587,
        "EMAIL_HOST_USER": "lab@example.org",
        "EMAIL_HOST_PASSWORD": "p/ss:w",
        "EMAIL_USE_SSL": False,
        "EMAIL_USE_TLS": True,
    }


def test_mail_from_an_smtps_url_uses_implicit_tls() -> None:
    mail = email_settings({"EMAIL_URL": "smtps://u:p@mail.example.org:2465"})
    assert (mail["EMAIL_PORT"], mail["EMAIL_USE_SSL"], mail["EMAIL_USE_TLS"]) == (2465, True, False)
    plain = email_settings({"EMAIL_URL": "smtp+plain://relay:25"})
    assert (plain["EMAIL_PORT"], plain["EMAIL_USE_SSL"], plain["EMAIL_USE_TLS"]) == (
        25,
        False,
        False,
    )


def test_mail_from_separate_variables() -> None:
    mail = email_settings(
        {"EMAIL_HOST": "relay.internal", "EMAIL_PORT": "25", "EMAIL_USE_TLS": "0"}
    )
    assert (mail["EMAIL_HOST"], mail["EMAIL_PORT"], mail["EMAIL_USE_TLS"]) == (
        "relay.internal",
        25,
        False,
    )
    assert email_settings({"EMAIL_HOST": "mx"})["EMAIL_USE_TLS"] is True  # STARTTLS by default


def test_without_mail_settings_mail_goes_to_the_log() -> None:
    assert email_settings({}) == {"EMAIL_BACKEND": "h3lab.maillog.MailLogBackend"}
    with pytest.raises(ImproperlyConfigured, match="EMAIL_URL"):
        email_settings({"EMAIL_URL": "http://mail.example.org"})


# --- compose ---------------------------------------------------------------------------------


def test_compose_serves_with_gunicorn_conf_and_checks_readiness() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    web = compose["services"]["web"]
    assert "/readyz" in " ".join(web["healthcheck"]["test"])
    assert "--config gunicorn.conf.py" in (ROOT / "scripts/entrypoint.sh").read_text()
    assert web["environment"]["GUNICORN_THREADS"].startswith("${GUNICORN_THREADS")

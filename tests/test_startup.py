"""``make run``'s start-up summary (scripts/run.py) and the embedded default's mail log."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core import mail
from django.test import override_settings

from disclosure.demo import SECOND_REVIEWER
from experiments.demo import PERSONAS
from h3lab.maillog import SEPARATOR, MailLogBackend
from scripts import run as run_script


def test_the_summary_lists_every_demo_user_with_role_and_password_and_the_url() -> None:
    users = [(p.username, p.password, p.role) for p in PERSONAS]
    text = run_script.startup_summary("http://127.0.0.1:8123/", users, "appended to var/mail.log")
    assert "h3lab is up: http://127.0.0.1:8123/" in text
    lines = text.splitlines()
    for username, password, role in users:
        assert any(line.split()[:2] == [username, password] and role in line for line in lines)
    assert "Mail: appended to var/mail.log" in text
    assert max(len(line) for line in lines) <= 79


def test_the_url_uses_the_port_the_web_server_listens_on_and_a_reachable_host() -> None:
    assert run_script.browse_url("127.0.0.1", "8123") == "http://127.0.0.1:8123/"
    anywhere = "0.0.0.0"  # noqa: S104 (a host name passed around, nothing is bound)
    assert run_script.browse_url(anywhere, "9000") == "http://127.0.0.1:9000/"
    assert run_script.browse_url("::1", "8000") == "http://[::1]:8000/"
    web = next(c for c in run_script.commands("python", anywhere, "9000") if c.name == "web")
    assert f"{anywhere}:9000" in web.argv


def test_the_lab_facts_come_from_the_demo_and_the_mail_settings() -> None:
    users, mail_line = run_script.lab_facts()
    demo_users = {p.username for p in PERSONAS} | {SECOND_REVIEWER[0]}
    assert {u[0] for u in users} == demo_users and len(users) == len(demo_users)
    assert ("katalin", "katalin-h3lab-demo") in {u[:2] for u in users}
    assert run_script.mail_destination("h3lab.maillog.MailLogBackend", "var/mail.log") == (
        "appended to var/mail.log (tail -f it); notifications are also in each inbox"
    )
    assert "printed here" in run_script.mail_destination(
        "django.core.mail.backends.console.EmailBackend", ""
    )
    assert mail_line  # the test settings' backend, described
    assert run_script._short(str(run_script.ROOT / "var" / "mail.log")) == "var/mail.log"
    assert run_script._short("/srv/h3lab/mail.log") == "/srv/h3lab/mail.log"


def test_the_mail_log_backend_appends_every_message(tmp_path: Path) -> None:
    log = tmp_path / "var" / "mail.log"
    with override_settings(EMAIL_BACKEND="h3lab.maillog.MailLogBackend", EMAIL_FILE_PATH=str(log)):
        assert (
            mail.send_mail("Review requested", "Please review finding 7.", None, ["a@x.org"]) == 1
        )
        assert mail.send_mail("Released", "Finding 7 is public.", None, ["b@x.org"]) == 1
    text = log.read_text(encoding="utf-8")
    assert text.count(SEPARATOR) == 2
    assert text.index("Subject: Review requested") < text.index("Subject: Released")
    assert "To: a@x.org" in text and "Finding 7 is public." in text


def test_the_mail_log_backend_fails_loudly_unless_told_to_be_silent(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the log's folder should be")
    message = mail.EmailMessage("s", "b", "from@x.org", ["to@x.org"])
    with pytest.raises(OSError):
        MailLogBackend(file_path=blocked / "mail.log").send_messages([message])
    assert (
        MailLogBackend(file_path=blocked / "mail.log", fail_silently=True).send_messages([message])
        == 0
    )

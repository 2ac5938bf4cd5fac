"""Accounts: login lockout, the second factor, password change and reset, Argon2.

The lockout counts failures per username and client address (django-axes); the second factor
is TOTP with one-time recovery codes (django-otp), required of reviewers, release managers,
delegated project managers, staff and superusers (web/accounts.py).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.core import mail
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice
from guardian.shortcuts import assign_perm

from disclosure.models import AuditEntry
from experiments.models import Tier
from tests import factories
from tests.conftest import Lab, login
from web.accounts import new_recovery_codes

pytestmark = pytest.mark.django_db

WRONG = "not-the-password"
REAL_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]


def try_login(client: Client, username: str, password: str) -> Any:
    return client.post(reverse("login"), {"username": username, "password": password})


def signed_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def without_csrf(content: bytes) -> str:
    return re.sub(r'name="csrfmiddlewaretoken" value="[^"]*"', "", content.decode())


def code_for(device: TOTPDevice) -> str:
    """The device's current code, as an authenticator app shows it."""
    code = totp(device.bin_key, device.step, device.t0, device.digits, device.drift)
    return f"{code:0{device.digits}d}"


# --- lockout ------------------------------------------------------------------------------------


def test_five_failures_lock_the_account_and_then_the_right_password_is_refused(lab: Lab) -> None:
    client = Client()
    answers = [try_login(client, "alice", WRONG).status_code for _ in range(5)]
    assert answers == [200, 200, 200, 200, 429]
    locked = try_login(client, "alice", factories.PASSWORD)
    assert locked.status_code == 429
    assert b"Too many failed attempts" in locked.content
    assert signed_in(client) is False


def test_an_admin_command_lifts_the_lock(lab: Lab) -> None:
    client = Client()
    for _ in range(5):
        try_login(client, "alice", WRONG)
    call_command("axes_reset_username", "alice")
    assert try_login(client, "alice", factories.PASSWORD).status_code == 302
    assert signed_in(client) is True


def test_the_lock_lifts_after_the_cool_off(lab: Lab, settings: Any) -> None:
    client = Client()
    for _ in range(5):
        try_login(client, "alice", WRONG)
    past = timezone.now() - timedelta(minutes=settings.H3LAB_LOGIN_COOLOFF_MINUTES + 1)
    AccessAttempt.objects.update(attempt_time=past)
    assert try_login(client, "alice", factories.PASSWORD).status_code == 302


def test_the_lock_is_per_username_and_address(lab: Lab) -> None:
    for _ in range(5):
        try_login(Client(), "alice", WRONG)
    elsewhere = Client(REMOTE_ADDR="10.0.0.9")
    assert try_login(elsewhere, "alice", factories.PASSWORD).status_code == 302


def test_every_failure_and_the_lockout_are_audited(lab: Lab) -> None:
    for _ in range(5):
        try_login(Client(), "alice", WRONG)
    failures = AuditEntry.objects.filter(action="account.login_failed")
    assert failures.count() == 5
    assert failures.first().new == {"username": "alice"}  # type: ignore[union-attr]
    lockout = AuditEntry.objects.get(action="account.locked_out")
    assert (lockout.new, lockout.ip) == ({"username": "alice"}, "127.0.0.1")


def test_an_unknown_username_gets_the_same_answers_as_a_real_one(lab: Lab) -> None:
    real, ghost = Client(), Client()
    for _ in range(4):
        known_fail, ghost_fail = try_login(real, "alice", WRONG), try_login(ghost, "nobody", WRONG)
        assert known_fail.status_code == ghost_fail.status_code == 200
        assert known_fail.context["form"].errors == ghost_fail.context["form"].errors
    known_lock, ghost_lock = try_login(real, "alice", WRONG), try_login(ghost, "nobody", WRONG)
    assert known_lock.status_code == ghost_lock.status_code == 429
    assert without_csrf(known_lock.content) == without_csrf(ghost_lock.content)


# --- second factor ------------------------------------------------------------------------------


def test_a_reviewer_without_a_device_is_sent_to_enrolment_and_cannot_open_a_finding(
    lab: Lab,
) -> None:
    rita = factories.make_reviewer("rita")
    finding = factories.make_finding(lab.project, tier=Tier.REVIEW)
    client = Client()
    client.force_login(rita)
    page = client.get(reverse("finding", args=[finding.pk]))
    assert page.status_code == 302
    assert page["Location"].startswith(reverse("mfa-enrol"))
    assert client.get(reverse("findings")).status_code == 302
    assert client.get(reverse("admin:index")).status_code == 302
    api = client.get(reverse("api-finding-list"))
    assert (api.status_code, api.json()["error"]["code"]) == (403, "second_factor_required")


@pytest.mark.parametrize("role", ["release_manager", "delegated", "superuser"])
def test_every_privileged_role_needs_the_second_factor(lab: Lab, role: str) -> None:
    user = factories.make_user(role, is_superuser=role == "superuser")
    if role == "release_manager":
        factories.add_to_group(user, "release-managers")
    elif role == "delegated":
        assign_perm("experiments.change_project", user, lab.project)
    client = Client()
    client.force_login(user)
    assert client.get(reverse("home"))["Location"].startswith(reverse("mfa-enrol"))


def test_enrolment_with_a_valid_code_shows_recovery_codes_once_then_opens_the_site(
    lab: Lab,
) -> None:
    rita = factories.make_reviewer("rita")
    finding = factories.make_finding(lab.project, tier=Tier.REVIEW)
    client = Client()
    client.force_login(rita)
    page = client.get(reverse("mfa-enrol"))
    assert page.status_code == 200
    assert b"<svg" in page.content and b"otpauth://totp/" in page.content
    device = TOTPDevice.objects.get(user=rita, confirmed=False)

    done = client.post(reverse("mfa-enrol"), {"otp_token": code_for(device), "next": "/findings/"})
    assert done["Location"].startswith(reverse("mfa-recovery-codes"))
    codes_page = client.get(done["Location"])
    assert len(codes_page.context["codes"]) == 10
    assert client.get(reverse("mfa-recovery-codes")).status_code == 302  # shown once

    assert client.get(reverse("finding", args=[finding.pk])).status_code == 200
    device.refresh_from_db()
    assert device.confirmed is True
    entry = AuditEntry.objects.get(action="account.mfa_enrolled")
    assert (entry.actor, entry.new) == (rita, {"device": "totp", "recovery_codes": 10})


def test_a_wrong_code_is_refused_and_audited(lab: Lab) -> None:
    rita = factories.make_reviewer("rita")
    client = Client()
    client.force_login(rita)
    client.get(reverse("mfa-enrol"))
    page = client.post(reverse("mfa-enrol"), {"otp_token": "000000x"})
    assert page.status_code == 200 and page.context["form"].errors
    assert TOTPDevice.objects.get(user=rita).confirmed is False
    assert AuditEntry.objects.filter(action="account.mfa_failed", actor=rita).count() == 1
    assert client.get(reverse("findings"))["Location"].startswith(reverse("mfa-enrol"))


def test_an_enrolled_reviewer_passes_with_the_current_code(lab: Lab) -> None:
    rita = factories.make_reviewer("rita")
    device = TOTPDevice.objects.create(user=rita, name="phone", confirmed=True)
    client = Client()
    client.force_login(rita)
    assert client.get(reverse("findings"))["Location"].startswith(reverse("mfa-verify"))
    wrong = client.post(reverse("mfa-verify"), {"otp_token": "123"})
    assert wrong.status_code == 200
    assert AuditEntry.objects.filter(action="account.mfa_failed").count() == 1
    device.throttle_reset()
    ok = client.post(reverse("mfa-verify"), {"otp_token": code_for(device), "next": "/findings/"})
    assert ok["Location"] == "/findings/"
    assert client.get(reverse("findings")).status_code == 200


def test_a_recovery_code_works_once(lab: Lab) -> None:
    rita = factories.make_reviewer("rita")
    TOTPDevice.objects.create(user=rita, name="phone", confirmed=True)
    code = new_recovery_codes(rita)[0]
    first = Client()
    first.force_login(rita)
    assert first.post(reverse("mfa-verify"), {"otp_token": code})["Location"] == reverse("home")
    assert first.get(reverse("findings")).status_code == 200
    entry = AuditEntry.objects.get(action="account.recovery_code_used")
    assert (entry.actor, entry.new) == (rita, {"codes_left": 9})

    second = Client()
    second.force_login(rita)
    again = second.post(reverse("mfa-verify"), {"otp_token": code})
    assert again.status_code == 200 and again.context["form"].errors
    assert second.get(reverse("findings"))["Location"].startswith(reverse("mfa-verify"))


def test_an_unprivileged_researcher_is_not_forced(lab: Lab) -> None:
    client = Client()
    client.force_login(lab.alice)
    assert client.get(reverse("runs")).status_code == 200
    assert client.get(reverse("findings")).status_code == 200


def test_a_researcher_who_enrolled_of_their_own_accord_is_asked_for_the_code(lab: Lab) -> None:
    TOTPDevice.objects.create(user=lab.alice, name="phone", confirmed=True)
    client = Client()
    client.force_login(lab.alice)
    assert client.get(reverse("runs"))["Location"].startswith(reverse("mfa-verify"))


def test_an_api_token_is_not_asked_for_a_second_factor(lab: Lab) -> None:
    from api import actions as api_actions

    rita = factories.make_reviewer("rita")
    made = api_actions.do_create_token(
        user=rita, name="cli", scope="read", days=1, acting_user=rita
    )
    client = Client(HTTP_AUTHORIZATION=f"Bearer {made.plaintext}")
    assert client.get(reverse("api-finding-list")).status_code == 200


def test_the_test_login_helper_gives_a_verified_session(lab: Lab) -> None:
    rita = factories.make_reviewer("rita")
    assert login(rita).get(reverse("findings")).status_code == 200


# --- passwords ----------------------------------------------------------------------------------


def test_a_pbkdf2_hash_still_verifies_and_is_upgraded_to_argon2_at_login(
    lab: Lab, settings: Any
) -> None:
    settings.PASSWORD_HASHERS = REAL_HASHERS
    from django.contrib.auth.hashers import make_password

    User.objects.filter(pk=lab.alice.pk).update(
        password=make_password(factories.PASSWORD, hasher="pbkdf2_sha256")
    )
    assert try_login(Client(), "alice", factories.PASSWORD).status_code == 302
    lab.alice.refresh_from_db()
    assert lab.alice.password.startswith("argon2")


def test_a_password_change_works_and_hashes_with_argon2(lab: Lab, settings: Any) -> None:
    settings.PASSWORD_HASHERS = REAL_HASHERS
    lab.alice.set_password(factories.PASSWORD)
    lab.alice.save()
    client = login(lab.alice)
    new = "a-much-longer-new-secret-42"
    response = client.post(
        reverse("password_change"),
        {"old_password": factories.PASSWORD, "new_password1": new, "new_password2": new},
    )
    assert response["Location"] == reverse("password_change_done")
    lab.alice.refresh_from_db()
    assert lab.alice.password.startswith("argon2$")
    assert lab.alice.check_password(new) is True
    assert client.get(reverse("password_change_done")).status_code == 200


def test_the_password_reset_email_carries_a_link_that_resets(lab: Lab) -> None:
    client = Client()
    sent = client.post(reverse("password_reset"), {"email": "alice@lab.test"})
    assert sent["Location"] == reverse("password_reset_done")
    assert len(mail.outbox) == 1
    link = re.search(r"https?://[^/\s]+(/accounts/password/reset/\S+/)", str(mail.outbox[0].body))
    assert link is not None
    form_page = client.get(link.group(1), follow=True)
    assert form_page.context["validlink"] is True
    new = "reset-to-something-long-7"
    done = client.post(
        form_page.redirect_chain[-1][0], {"new_password1": new, "new_password2": new}
    )
    assert done["Location"] == reverse("password_reset_complete")
    assert try_login(Client(), "alice", new).status_code == 302
    # The link works once.
    assert client.get(link.group(1), follow=True).context["validlink"] is False


def test_the_login_page_links_to_the_password_reset(client: Client, db: None) -> None:
    assert reverse("password_reset").encode() in client.get(reverse("login")).content

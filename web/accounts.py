"""Accounts: the second factor (TOTP with one-time recovery codes) and the lockout answer.

- :class:`SecondFactorMiddleware` keeps a signed-in user who must pass a second factor
  (:func:`disclosure.policy.requires_second_factor`) and has not yet, on the enrolment page
  (no confirmed device) or the verification page, whatever URL they ask for.
- :func:`mfa_enrol` shows a new TOTP secret (otpauth URI and QR code), confirms it with one
  code, then shows ten recovery codes once. :func:`mfa_verify` takes a TOTP or a recovery code.
- :func:`lockout_response` is django-axes' answer to a locked-out login: the login page with
  a message that does not depend on whether the username exists.

Enrolment, failed verifications and recovery-code use are written to the audit log here;
failed logins and lockouts are recorded by :mod:`disclosure.receivers`.
"""

from __future__ import annotations

import secrets
from base64 import b32encode
from collections.abc import Callable
from typing import Any

import django_otp
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from disclosure import audit, policy

_CODES_SESSION_KEY = "h3lab_recovery_codes"
# Set at login: the account had a confirmed second factor then. Someone who enrolled of their
# own accord is asked for it too, at no query per request.
ENROLLED_SESSION_KEY = "h3lab_has_second_factor"
# Pages an unverified user may still open: signing in and out, the second-factor pages.
_EXEMPT_URL_NAMES = ("login", "logout", "mfa-enrol", "mfa-verify", "mfa-recovery-codes")


def _exempt_paths() -> tuple[str, ...]:
    return (
        *(reverse(name) for name in _EXEMPT_URL_NAMES),
        reverse("admin:login"),
        "/" + settings.STATIC_URL.lstrip("/"),
    )


class SecondFactorMiddleware:
    """After ``OTPMiddleware``: a user who needs a second factor and has not passed one in
    this session reaches only the exempt pages. SECURITY: this is the only gate, so it runs
    on every path (admin included) except the exempt ones. An API request that carries its
    own token is not a session request and passes (token auth is not password based); an
    API request riding on an unverified session is refused."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self._exempt: tuple[str, ...] | None = None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self._exempt is None:
            self._exempt = _exempt_paths()
        path = request.path_info
        if path in self._exempt or path.startswith(self._exempt[-1]):
            return self.get_response(request)
        is_api = path.startswith("/api/")
        if is_api and request.headers.get("Authorization", "").lower().startswith(
            ("bearer ", "token ")
        ):
            return self.get_response(request)
        user: Any = request.user
        if not user.is_authenticated or user.is_verified():
            return self.get_response(request)
        enrolled = request.session.get(ENROLLED_SESSION_KEY, False)
        if not enrolled and not policy.requires_second_factor(user):
            return self.get_response(request)
        if is_api:
            message = "This account needs a second factor: verify it in the browser first."
            return JsonResponse(
                {"error": {"code": "second_factor_required", "message": message}}, status=403
            )
        target = "mfa-verify" if django_otp.user_has_device(user) else "mfa-enrol"
        return redirect(f"{reverse(target)}?{urlencode({'next': request.get_full_path()})}")


def note_second_factor_at_login(sender: Any, request: HttpRequest, user: Any, **kw: Any) -> None:
    """``user_logged_in`` receiver (connected in :class:`web.apps.WebConfig`)."""
    if request is not None and hasattr(request, "session"):
        request.session[ENROLLED_SESSION_KEY] = django_otp.user_has_device(user)


def _next_url(request: HttpRequest) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return reverse(settings.LOGIN_REDIRECT_URL)


class TokenForm(forms.Form):
    otp_token = forms.CharField(
        label="Code",
        max_length=16,
        widget=forms.TextInput(
            attrs={"autocomplete": "one-time-code", "inputmode": "numeric", "autofocus": True}
        ),
    )

    def token(self) -> str:
        return str(self.cleaned_data["otp_token"]).replace(" ", "")


def _qr_svg(data: str) -> str:
    """The provisioning URI as an inline SVG QR code (no script, no external image)."""
    import qrcode
    from qrcode.image.svg import SvgPathImage

    svg = qrcode.make(data, image_factory=SvgPathImage, box_size=8).to_string(encoding="unicode")
    return str(svg[svg.index("<svg") :])


def new_recovery_codes(user: Any) -> list[str]:
    """Replace ``user``'s recovery codes with :setting:`H3LAB_RECOVERY_CODES` fresh ones."""
    device, _ = StaticDevice.objects.get_or_create(user=user, name="recovery codes")
    device.token_set.all().delete()
    codes = [secrets.token_hex(5) for _ in range(settings.H3LAB_RECOVERY_CODES)]
    StaticToken.objects.bulk_create(StaticToken(device=device, token=c) for c in codes)
    return codes


def do_enrol_totp_device(request: HttpRequest, device: TOTPDevice) -> list[str]:
    """Confirm ``device`` (its code was just checked), issue recovery codes, mark this session
    verified and audit it. Returns the recovery codes, to be shown once."""
    user: Any = request.user
    with transaction.atomic():
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        TOTPDevice.objects.filter(user=user).exclude(pk=device.pk).delete()
        codes = new_recovery_codes(user)
        audit.record(
            user,
            "account.mfa_enrolled",
            user,
            new={"device": "totp", "recovery_codes": len(codes)},
            ip=audit.client_ip(request),
        )
    django_otp.login(request, device)
    return codes


def _record_failure(request: HttpRequest, step: str) -> None:
    user: Any = request.user
    audit.record(user, "account.mfa_failed", user, new={"step": step}, ip=audit.client_ip(request))


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def mfa_enrol(request: HttpRequest) -> HttpResponse:
    user: Any = request.user
    if django_otp.user_has_device(user):
        if user.is_verified():
            messages.info(request, "Your second factor is already set up.")
            return redirect(_next_url(request))
        return redirect(f"{reverse('mfa-verify')}?{urlencode({'next': _next_url(request)})}")
    # The same unconfirmed secret across reloads, so a scanned QR code stays valid.
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    if device is None:
        device = TOTPDevice.objects.create(user=user, name="authenticator", confirmed=False)
    form = TokenForm(request.POST or None)
    if form.is_valid():
        if device.verify_token(form.token()):
            request.session[_CODES_SESSION_KEY] = do_enrol_totp_device(request, device)
            next_url = _next_url(request)
            return redirect(f"{reverse('mfa-recovery-codes')}?{urlencode({'next': next_url})}")
        _record_failure(request, "enrol")
        form.add_error("otp_token", "That code did not match. Check the clock on your device.")
    context = {
        "form": form,
        "config_url": device.config_url,
        "secret": b32encode(device.bin_key).decode().rstrip("="),
        "qr_svg": _qr_svg(device.config_url),
        "next": _next_url(request),
    }
    return render(request, "registration/mfa_enrol.html", context)


@never_cache
@login_required
def mfa_recovery_codes(request: HttpRequest) -> HttpResponse:
    """The recovery codes just issued, once: they leave the session as they are shown."""
    codes = request.session.pop(_CODES_SESSION_KEY, None)
    if not codes:
        return redirect(_next_url(request))
    return render(
        request,
        "registration/mfa_recovery_codes.html",
        {"codes": codes, "next": _next_url(request)},
    )


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def mfa_verify(request: HttpRequest) -> HttpResponse:
    user: Any = request.user
    if user.is_verified():
        return redirect(_next_url(request))
    if not django_otp.user_has_device(user):
        return redirect(f"{reverse('mfa-enrol')}?{urlencode({'next': _next_url(request)})}")
    form = TokenForm(request.POST or None)
    if form.is_valid():
        # Throttled per device by django-otp: each failure doubles the wait before the next try.
        device = django_otp.match_token(user, form.token())
        if device is not None:
            django_otp.login(request, device)
            if isinstance(device, StaticDevice):
                left = device.token_set.count()
                audit.record(
                    user,
                    "account.recovery_code_used",
                    user,
                    new={"codes_left": left},
                    ip=audit.client_ip(request),
                )
                messages.warning(
                    request, f"Recovery code used: {left} left. Re-enrol if you lost your device."
                )
            return redirect(_next_url(request))
        _record_failure(request, "verify")
        form.add_error("otp_token", "That code did not match.")
    return render(
        request, "registration/mfa_verify.html", {"form": form, "next": _next_url(request)}
    )


def lockout_response(
    request: HttpRequest, original_response: HttpResponse | None, credentials: dict[str, Any] | None
) -> HttpResponse:
    """django-axes' answer to a locked-out login (``AXES_LOCKOUT_CALLABLE``): the login page,
    status 429. SECURITY: the message names no username and reads the same whether or not the
    account exists, so the lockout does not reveal which usernames are real."""
    context = {
        "form": AuthenticationForm(request),
        "locked_out": True,
        "cooloff_minutes": settings.H3LAB_LOGIN_COOLOFF_MINUTES,
        "next": _next_url(request),
    }
    return render(request, "registration/login.html", context, status=429)

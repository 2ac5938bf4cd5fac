"""The token pages (``/api/tokens/``): a signed-in user creates and revokes their own API
tokens. A new token's secret is shown once, in the answer to the POST that created it."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from api import actions
from api.models import ApiToken, TokenScope
from experiments.users import signed_in

LIFETIMES = [(7, "7 days"), (30, "30 days"), (90, "90 days"), (365, "1 year")]


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="Where it is used, e.g. “laptop” or “sweep notebook”."
    )
    scope = forms.ChoiceField(choices=TokenScope.choices, initial=TokenScope.READ)
    days = forms.TypedChoiceField(choices=LIFETIMES, coerce=int, initial=30, label="Expires in")


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        try:
            created = actions.check_create_token(
                user=signed_in(request.user), **form.cleaned_data, acting_user=request.user
            )
        except ValidationError as err:
            form.add_error(None, err)
        else:
            form = TokenForm()
    context = {
        "form": form,
        "created": created,  # SECURITY: rendered once here, stored nowhere
        "tokens": ApiToken.objects.filter(user=signed_in(request.user)),
        "now": timezone.now(),
        "site_url": settings.H3LAB_SITE_URL,
    }
    return render(request, "api/tokens.html", context)


@login_required
@require_POST
def token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    # Only one's own tokens: anyone else's is "not found".
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    if actions.do_revoke_token(token, acting_user=request.user):
        messages.success(request, f"Token “{token.name}” revoked; it no longer works.")
    return redirect("tokens")

"""Editing a finding: in place at the team tier, as a reviewed revision above it."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from disclosure import policy
from disclosure.actions.revisions import check_propose_revision, do_withdraw_pending_revision
from experiments.actions.findings import do_edit_finding
from experiments.inputs import MAX_BODY_CHARS, MAX_TITLE_CHARS
from experiments.models import Finding, FindingRevision, RevisionState, Tier


class FindingEditForm(forms.Form):
    title = forms.CharField(max_length=MAX_TITLE_CHARS)
    body = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 16}), required=False, max_length=MAX_BODY_CHARS
    )
    note = forms.CharField(
        required=False,
        max_length=2000,
        label="What changed and why",
        widget=forms.Textarea(attrs={"rows": 2}),
    )


def _editable(request: HttpRequest, pk: int) -> Finding:
    finding = policy.get_finding_or_404(request.user, pk)
    if not policy.can_revise_finding(request.user, finding):
        raise Http404("Not found.")
    return finding


@never_cache
@login_required
def finding_edit(request: HttpRequest, pk: int) -> HttpResponse:
    finding = _editable(request, pk)
    initial = {"title": finding.title, "body": finding.body}
    form = FindingEditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            if finding.tier == Tier.TEAM:
                do_edit_finding(
                    finding, title=data["title"], body=data["body"], note=data["note"],
                    acting_user=request.user,
                )  # fmt: skip
                messages.success(request, "Saved.")
            else:
                revision = check_propose_revision(
                    finding, title=data["title"], body=data["body"], note=data["note"],
                    acting_user=request.user,
                )  # fmt: skip
                messages.success(request, _proposed(revision))
            return redirect(finding)
        except ValidationError as err:
            form.add_error(None, err)
    return render(request, "disclosure/finding_edit.html", {"finding": finding, "form": form})


def _proposed(revision: FindingRevision) -> str:
    if revision.state == RevisionState.APPROVED:
        return f"Revision {revision.number} passed review and is what readers see now."
    return (
        f"Revision {revision.number} is pending review; readers keep the current text until "
        "it is approved."
    )


@login_required
@require_POST
def revision_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    finding = _editable(request, pk)
    revision = FindingRevision.objects.filter(finding=finding, state=RevisionState.PENDING).first()
    if revision is None:
        messages.info(request, "No revision is pending.")
        return redirect(finding)
    reason = request.POST.get("reason", "")[:300]
    do_withdraw_pending_revision(revision, reason=reason, acting_user=request.user)
    messages.success(request, f"Revision {revision.number} withdrawn.")
    return redirect(finding)

"""Forms for the disclosure pages: parse and validate input; views hand the result to actions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.validators import URLValidator
from django.utils import timezone

from disclosure.models import AlignmentValue, CapabilityUplift, VoteKind
from experiments.inputs import FUTURE_LIMIT_MESSAGE, MAX_RATIONALE_CHARS, too_far_ahead
from experiments.models import Finding, Project, Tier
from experiments.users import Viewer

User = get_user_model()


class ReasonForm(forms.Form):
    reason = forms.CharField(max_length=300, widget=forms.Textarea(attrs={"rows": 2}))


class ConfirmedReasonForm(ReasonForm):
    """An irreversible step: a reason, and a ticked box saying the user means it."""

    confirm = forms.BooleanField(label="I understand this cannot be undone")


class RetractForm(ConfirmedReasonForm):
    destroy_data = forms.BooleanField(
        required=False,
        label="Destroy the evidence files (crypto-shredding: erase their data keys)",
    )
    destroy_reason = forms.CharField(
        required=False,
        max_length=300,
        label="Why the evidence must be destroyed",
    )
    confirm_destroy = forms.BooleanField(
        required=False, label="I understand nobody can ever read the destroyed files again"
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("destroy_data"):
            if not data.get("confirm_destroy"):
                self.add_error("confirm_destroy", "Confirm that the files are to be destroyed.")
            if not (data.get("destroy_reason") or "").strip():
                self.add_error("destroy_reason", "Say why the evidence must be destroyed.")
        return data


class RationaleForm(forms.Form):
    rationale = forms.CharField(
        required=False, max_length=MAX_RATIONALE_CHARS, widget=forms.Textarea(attrs={"rows": 2})
    )


# No answer is preselected: a reviewer who submits without choosing is asked to choose.
UNCHOSEN: list[tuple[Any, str]] = [("", "— choose —")]


class AssessmentForm(forms.Form):
    capability_uplift = forms.TypedChoiceField(
        choices=[*UNCHOSEN, *CapabilityUplift.choices], coerce=int
    )
    alignment_value = forms.TypedChoiceField(
        choices=[*UNCHOSEN, *AlignmentValue.choices], coerce=int
    )
    categories = forms.CharField(
        required=False, help_text="comma-separated, e.g. interpretability, training dynamics"
    )
    rationale = forms.CharField(
        max_length=MAX_RATIONALE_CHARS, widget=forms.Textarea(attrs={"rows": 4})
    )
    evidence_links = forms.CharField(
        required=False,
        max_length=MAX_RATIONALE_CHARS,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="one URL per line",
    )

    def clean_categories(self) -> list[str]:
        raw = self.cleaned_data["categories"]
        return [c.strip()[:64] for c in raw.split(",") if c.strip()][:20]

    def clean_evidence_links(self) -> list[str]:
        links = [line.strip() for line in self.cleaned_data["evidence_links"].splitlines()]
        links = [link for link in links if link][:20]
        # SECURITY: http(s) only, so a link rendered in the page cannot be javascript:.
        validate = URLValidator(schemes=["http", "https"])
        for link in links:
            validate(link)
        return links


class VoteForm(forms.Form):
    kind = forms.ChoiceField(choices=[*UNCHOSEN, *VoteKind.choices])
    rationale = forms.CharField(
        required=False, max_length=MAX_RATIONALE_CHARS, widget=forms.Textarea(attrs={"rows": 2})
    )


class WithdrawObjectionForm(forms.Form):
    reason = forms.CharField(required=False, max_length=300)


class ClearObjectionForm(forms.Form):
    rationale = forms.CharField(
        max_length=MAX_RATIONALE_CHARS, widget=forms.Textarea(attrs={"rows": 2})
    )


class GrantApprovalForm(forms.Form):
    decision = forms.ChoiceField(
        choices=[*UNCHOSEN, ("approve", "approve"), ("decline", "decline")]
    )
    note = forms.CharField(required=False, max_length=300)


class ScheduleForm(forms.Form):
    """The embargo instant is typed in the viewer's local time; a script fills ``tz_offset``
    (minutes east of UTC), and the instant is stored in UTC."""

    embargo_until = forms.DateTimeField(
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}),
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"],
    )
    tz_offset = forms.IntegerField(
        required=False, min_value=-14 * 60, max_value=14 * 60, widget=forms.HiddenInput
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        when = data.get("embargo_until")
        if isinstance(when, datetime):
            naive = when.replace(tzinfo=None)
            if naive.year > 9000:  # shifting by the offset must stay inside datetime's range
                raise forms.ValidationError({"embargo_until": FUTURE_LIMIT_MESSAGE})
            data["embargo_until"] = (naive - timedelta(minutes=data.get("tz_offset") or 0)).replace(
                tzinfo=UTC
            )
            if too_far_ahead(data["embargo_until"]):
                raise forms.ValidationError({"embargo_until": FUTURE_LIMIT_MESSAGE})
        return data


class GrantForm(forms.Form):
    user = forms.ModelChoiceField(
        queryset=User.objects.filter(is_active=True).order_by("username"),
        required=False,
        to_field_name="username",
    )
    group = forms.ModelChoiceField(queryset=Group.objects.order_by("name"), required=False)
    project = forms.ModelChoiceField(queryset=Project.objects.none(), required=False)
    finding = forms.ModelChoiceField(queryset=Finding.objects.none(), required=False)
    max_tier = forms.TypedChoiceField(
        choices=[(Tier.PARTNERS, "partners"), (Tier.REVIEW, "review")], coerce=int
    )
    expires_on = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    note = forms.CharField(max_length=300, required=False)

    def __init__(self, *args: Any, projects: Any, findings: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # SECURITY: only projects the release manager manages, and findings they can see.
        self.fields["project"].queryset = projects  # type: ignore[attr-defined]
        self.fields["finding"].queryset = findings  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if bool(data.get("user")) == bool(data.get("group")):
            raise forms.ValidationError("Choose a user or a group.")
        if bool(data.get("project")) == bool(data.get("finding")):
            raise forms.ValidationError("Choose a project or one finding.")
        if data.get("expires_on"):
            day = data["expires_on"]
            data["expires_at"] = datetime(day.year, day.month, day.day, 23, 59, tzinfo=UTC)
            if data["expires_at"] <= timezone.now():
                raise forms.ValidationError("The expiry must be in the future.")
            if too_far_ahead(data["expires_at"]):
                raise forms.ValidationError({"expires_on": FUTURE_LIMIT_MESSAGE})
        return data


class AcceptAgreementForm(forms.Form):
    version = forms.IntegerField(widget=forms.HiddenInput)
    confirm = forms.BooleanField(label="I have read and accept this agreement")


class AuditFilterForm(forms.Form):
    actor = forms.CharField(required=False)
    action = forms.CharField(required=False)
    finding = forms.IntegerField(required=False, min_value=1, label="Finding #")
    since = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}))


class ExportForm(forms.Form):
    """Base of the export request forms: choices limited to what the user may export."""

    findings = forms.ModelMultipleChoiceField(queryset=Finding.objects.none(), required=False)
    project = forms.ModelChoiceField(queryset=Project.objects.none(), required=False)

    def __init__(self, *args: Any, user: Viewer, **kwargs: Any) -> None:
        from disclosure import policy

        super().__init__(*args, **kwargs)
        # SECURITY: only findings the user can see in projects they manage; anything else is
        # "not a valid choice", which reveals nothing about it.
        self.fields["findings"].queryset = policy.exportable_findings(user).select_related(  # type: ignore[attr-defined]
            "project"
        )
        self.fields["project"].queryset = policy.manageable_projects(user)  # type: ignore[attr-defined]

    def selection(self) -> dict[str, Any]:
        return {
            "findings": list(self.cleaned_data["findings"]),
            "project": self.cleaned_data["project"],
        }


class PublicExportForm(ExportForm):
    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("findings") and not data.get("project"):
            raise forms.ValidationError("Choose findings or a whole project.")
        return data


class PartnerExportForm(ExportForm):
    recipient = forms.ModelChoiceField(
        queryset=User.objects.filter(is_active=True).order_by("username"),
        to_field_name="username",
    )

    def selection(self) -> dict[str, Any]:
        return {**super().selection(), "recipient": self.cleaned_data["recipient"]}

"""Publication bundles and partner copies."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.urls import reverse
from rest_framework import serializers

from api.serializers.common import (
    FiniteFloatField,
    restrict,
    user_field,
)
from disclosure import policy
from disclosure.models import (
    Export,
)
from experiments.models import (
    Finding,
    Project,
)

User = get_user_model()


class ExportSerializer(serializers.ModelSerializer[Export]):
    progress = FiniteFloatField()
    blockers = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), read_only=True
    )
    created_by = user_field("created_by")
    recipient = user_field("recipient")
    project: serializers.SlugRelatedField[Project] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    findings: serializers.PrimaryKeyRelatedField[Finding] = serializers.PrimaryKeyRelatedField(
        many=True, read_only=True
    )
    download_url = serializers.SerializerMethodField()
    queue_unreachable = serializers.BooleanField(
        read_only=True,
        help_text="Queued, but the job queue was unreachable; the build starts when it returns.",
    )

    class Meta:
        model = Export
        fields = [
            "id",
            "kind",
            "status",
            "queue_unreachable",
            "progress",
            "message",
            "blockers",
            "created_by",
            "recipient",
            "project",
            "findings",
            "name",
            "size",
            "sha256",
            "signing_key_id",
            "encrypted",
            "created_at",
            "started_at",
            "finished_at",
            "download_url",
        ]
        read_only_fields = fields

    def get_download_url(self, export: Any) -> str:
        return reverse("api-export-download", args=[export.pk])


class ExportRequestSerializer(serializers.Serializer[Any]):
    """A publication bundle of public findings, or a recipient-marked partner copy. With no
    ``findings``: a project's public findings (public), or everything granted to the recipient
    in projects you manage (partner)."""

    kind = serializers.ChoiceField(choices=["public", "partner"])
    findings = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Finding.objects.none(), required=False
    )
    project = serializers.SlugRelatedField(
        slug_field="slug", queryset=Project.objects.none(), required=False, allow_null=True
    )
    recipient = serializers.SlugRelatedField(
        slug_field="username",
        queryset=User.objects.filter(is_active=True),
        required=False,
        allow_null=True,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            # SECURITY: the same choices as the export forms (disclosure.forms.ExportForm).
            restrict(self.fields["findings"], policy.exportable_findings(request.user))
            restrict(self.fields["project"], policy.manageable_projects(request.user))

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if data["kind"] == "public" and not data.get("findings") and not data.get("project"):
            raise serializers.ValidationError("Choose findings or a whole project.")
        if data["kind"] == "partner" and not data.get("recipient"):
            raise serializers.ValidationError({"recipient": "a partner copy needs a recipient"})
        return data

"""Collaborator grants."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework import serializers

from api.serializers.common import (
    restrict,
    user_field,
)
from disclosure import policy
from disclosure.models import (
    Grant,
)
from experiments.inputs import FUTURE_LIMIT_MESSAGE, too_far_ahead
from experiments.models import (
    Finding,
    Project,
    Tier,
)

User = get_user_model()


class GrantSerializer(serializers.ModelSerializer[Grant]):
    user = user_field("user")
    group = serializers.CharField(source="group.name", read_only=True, allow_null=True)
    project: serializers.SlugRelatedField[Project] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    agreement_version = serializers.IntegerField(source="agreement.version", read_only=True)
    granted_by = user_field("granted_by")
    active = serializers.SerializerMethodField()

    class Meta:
        model = Grant
        fields = [
            "id",
            "user",
            "group",
            "project",
            "finding",
            "max_tier",
            "agreement_version",
            "note",
            "granted_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "revoke_reason",
            "approval",
            "active",
        ]

    def get_active(self, grant: Grant) -> bool:
        return grant.is_active()


class GrantCreateSerializer(serializers.Serializer[Any]):
    """Grant exactly one user or group access to exactly one project or finding."""

    user = serializers.SlugRelatedField(
        slug_field="username",
        queryset=User.objects.filter(is_active=True),
        required=False,
        allow_null=True,
    )
    group = serializers.SlugRelatedField(
        slug_field="name", queryset=Group.objects.all(), required=False, allow_null=True
    )
    project = serializers.SlugRelatedField(
        slug_field="slug", queryset=Project.objects.none(), required=False, allow_null=True
    )
    finding = serializers.PrimaryKeyRelatedField(
        queryset=Finding.objects.none(), required=False, allow_null=True
    )
    max_tier = serializers.ChoiceField(
        choices=[(Tier.REVIEW, "review"), (Tier.PARTNERS, "partners")], default=Tier.PARTNERS
    )
    expires_at = serializers.DateTimeField()
    note = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")

    def validate_expires_at(self, value: datetime) -> datetime:
        if too_far_ahead(value):
            raise serializers.ValidationError(FUTURE_LIMIT_MESSAGE)
        return value

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            # SECURITY: only projects the user manages, and findings they can see in them.
            projects = policy.manageable_projects(request.user)
            findings = policy.visible_findings(request.user).filter(
                project__in=projects.values("pk")
            )
            restrict(self.fields["project"], projects)
            restrict(self.fields["finding"], findings)


class RevokeSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")

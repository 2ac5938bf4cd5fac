"""Files produced by runs."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.urls import reverse
from rest_framework import serializers

from api.serializers.common import (
    MAX_ID,
)
from experiments.models import (
    Artifact,
    Project,
)

User = get_user_model()


class ArtifactSerializer(serializers.ModelSerializer[Artifact]):
    project: serializers.SlugRelatedField[Project] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = [
            "id",
            "run",
            "project",
            "name",
            "kind",
            "content_type",
            "size",
            "sha256",
            "created_at",
            "download_url",
        ]

    def get_download_url(self, artifact: Artifact) -> str:
        return reverse("api-artifact-download", args=[artifact.pk])


class ArtifactFilterSerializer(serializers.Serializer[Any]):
    run = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    project = serializers.SlugField(required=False)
    kind = serializers.CharField(required=False, max_length=16)

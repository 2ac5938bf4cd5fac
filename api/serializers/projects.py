"""Projects."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from rest_framework import serializers

from experiments.models import (
    Project,
)

User = get_user_model()


class ProjectSerializer(serializers.ModelSerializer[Project]):
    class Meta:
        model = Project
        fields = ["slug", "name", "description", "created_at"]

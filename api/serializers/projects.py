"""Projects."""

from __future__ import annotations

from typing import Any

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


class ProjectCreateSerializer(serializers.Serializer[Any]):
    slug = serializers.CharField(max_length=64, help_text="lowercase letters, digits, hyphens")
    name = serializers.CharField(max_length=200)
    description = serializers.CharField(max_length=5000, required=False, default="")


class UsernameSerializer(serializers.Serializer[Any]):
    username = serializers.CharField(max_length=150)


class TeamSerializer(serializers.Serializer[Any]):
    """A project's team: its members, and who it delegated release management to."""

    project = serializers.CharField()
    members = serializers.ListField(child=serializers.CharField())
    delegates = serializers.ListField(child=serializers.CharField())

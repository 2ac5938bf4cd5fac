"""Experiments (named groups of runs)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import serializers

from api.serializers.common import (
    user_field,
)
from experiments.models import (
    Experiment,
    Project,
)

User = get_user_model()


class ExperimentSerializer(serializers.ModelSerializer[Experiment]):
    project: serializers.SlugRelatedField[Project] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    created_by = user_field("created_by")
    n_runs = serializers.IntegerField(read_only=True)

    class Meta:
        model = Experiment
        fields = ["id", "project", "name", "description", "created_by", "created_at", "n_runs"]


class ExperimentFilterSerializer(serializers.Serializer[Any]):
    project = serializers.SlugField(required=False)

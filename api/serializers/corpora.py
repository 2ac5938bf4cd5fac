"""Uploaded text corpora of a project."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class CorpusSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    size = serializers.IntegerField(help_text="bytes")
    task_path = serializers.CharField(help_text="what a run's config puts in task.path")


class CorpusUploadSerializer(serializers.Serializer[Any]):
    file = serializers.FileField(help_text="UTF-8 text; bytes are the tokens")

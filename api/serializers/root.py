"""The API root and "who am I"."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from rest_framework import serializers

User = get_user_model()


class RootSerializer(serializers.Serializer[Any]):
    version = serializers.CharField()
    schema = serializers.CharField()
    docs = serializers.CharField()
    endpoints = serializers.DictField(child=serializers.CharField())


class MeSerializer(serializers.Serializer[Any]):
    username = serializers.CharField()
    auth = serializers.ChoiceField(choices=["token", "session"])
    scope = serializers.CharField(help_text="the token's scope; 'manage' for a session")
    token_expires_at = serializers.DateTimeField(allow_null=True)
    projects = serializers.ListField(child=serializers.SlugField())
    reviewer = serializers.BooleanField()
    release_manager = serializers.BooleanField()

"""The API root and "who am I"."""

from __future__ import annotations

import logging

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.auth import HasScope
from api.models import ApiToken, TokenScope
from api.serializers.root import MeSerializer, RootSerializer
from api.views.common import (
    ApiViewMixin,
)
from disclosure import policy

log = logging.getLogger(__name__)


class RootView(ApiViewMixin, APIView):
    permission_classes = [AllowAny, HasScope]

    @extend_schema(responses=RootSerializer, operation_id="api_root")
    def get(self, request: Request) -> Response:
        endpoints = {
            name: reverse(f"api-{name}-list")
            for name in ("project", "experiment", "run", "artifact", "finding", "grant", "export")
        }
        endpoints["me"] = reverse("api-me")
        return Response(
            {
                "version": "v1",
                "schema": reverse("api-schema"),
                "docs": reverse("api-docs"),
                "endpoints": endpoints,
            }
        )


class MeView(ApiViewMixin, APIView):
    @extend_schema(responses=MeSerializer)
    def get(self, request: Request) -> Response:
        user = request.user
        token = request.auth if isinstance(request.auth, ApiToken) else None
        return Response(
            MeSerializer(
                {
                    "username": user.get_username(),
                    "auth": "token" if token else "session",
                    "scope": token.scope if token else TokenScope.MANAGE,
                    "token_expires_at": token.expires_at if token else None,
                    "projects": list(policy.visible_projects(user).values_list("slug", flat=True)),
                    "reviewer": policy.is_reviewer(user),
                    "release_manager": policy.is_release_manager(user),
                }
            ).data
        )

"""Files produced by runs, and their download."""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from api.auth import HasScope
from api.errors import ErrorSerializer
from api.serializers.artifacts import ArtifactFilterSerializer, ArtifactSerializer
from api.views.common import (
    ApiViewMixin,
    FirstRenderer,
    deny,
    parse_id,
    parse_query,
    unavailable,
)
from disclosure import policy
from experiments.actions.artifacts import do_record_artifact_download
from experiments.downloads import stream_artifact
from experiments.models import Artifact
from experiments.storage import ArtifactUnavailable, open_artifact

log = logging.getLogger(__name__)


class ArtifactViewSet(ApiViewMixin, viewsets.ReadOnlyModelViewSet[Artifact]):
    """Files produced by runs. Team members see their runs' artifacts; anyone else sees the
    evidence cited by findings they can read (anonymous users: public findings)."""

    serializer_class = ArtifactSerializer
    queryset = Artifact.objects.none()
    lookup_value_regex = r"\d+"
    permission_classes = [AllowAny, HasScope]

    def get_queryset(self) -> QuerySet[Artifact]:
        return policy.visible_artifacts(self.request.user).select_related("project")

    def get_object(self) -> Artifact:
        return policy.get_artifact_or_404(self.request.user, parse_id(self.kwargs["pk"]))

    @extend_schema(parameters=[ArtifactFilterSerializer])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        query = parse_query(ArtifactFilterSerializer, request)
        lookups = {"run": "run_id", "project": "project__slug", "kind": "kind"}
        artifacts = self.get_queryset().filter(**{lookups[k]: v for k, v in query.items()})
        page = self.paginate_queryset(artifacts.order_by("-created_at", "-id"))
        return self.get_paginated_response(ArtifactSerializer(page, many=True).data)

    @extend_schema(
        responses={
            (200, "application/octet-stream"): OpenApiResponse(
                OpenApiTypes.BINARY, description="the artifact's bytes"
            ),
            410: OpenApiResponse(ErrorSerializer, "destroyed when its finding was retracted"),
            503: OpenApiResponse(ErrorSerializer, "cannot be decrypted now"),
        }
    )
    @action(detail=True, methods=["get"], content_negotiation_class=FirstRenderer)
    def download(self, request: Request, pk: str) -> StreamingHttpResponse:
        """The artifact's bytes, through the same policy check and audit as the web download.
        ``X-Checksum-SHA256`` lets the client verify what it saved."""
        artifact = self.get_object()
        try:
            chunks = open_artifact(artifact)
        except FileNotFoundError:
            raise deny() from None
        except ArtifactUnavailable as exc:
            raise unavailable(f"artifact {artifact.pk}", exc) from None
        do_record_artifact_download(artifact, acting_user=request.user)
        return stream_artifact(artifact, chunks)

"""Publication bundles and partner copies."""

from __future__ import annotations

import logging

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import exceptions, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.errors import ErrorSerializer
from api.models import TokenScope
from api.serializers.exports import ExportRequestSerializer, ExportSerializer
from api.views.common import (
    ApiViewMixin,
    FirstRenderer,
    deny,
    parse_body,
    parse_id,
    unavailable,
)
from disclosure import audit, policy
from disclosure.actions.exports import check_request_export, do_record_export_download
from disclosure.exports.build import open_export, stream_export
from disclosure.exports.rules import ExportRefused, describe_blockers
from disclosure.models import Export
from experiments.storage import ArtifactUnavailable

log = logging.getLogger(__name__)


class ExportViewSet(ApiViewMixin, viewsets.GenericViewSet[Export]):
    """Publication bundles and partner copies: release managers request them; the requester
    and a partner copy's recipient (while still granted) download them."""

    queryset = Export.objects.none()
    serializer_class = ExportSerializer
    lookup_value_regex = r"\d+"
    scopes = {"create": TokenScope.MANAGE}

    def _may_export(self) -> bool:
        return policy.manageable_projects(self.request.user).exists()

    def list(self, request: Request) -> Response:
        mine = policy.visible_exports(request.user).select_related(
            "recipient", "created_by", "project"
        )
        if not (self._may_export() or mine.exists()):
            raise deny()
        page = self.paginate_queryset(mine.prefetch_related("findings"))
        return self.get_paginated_response(ExportSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ExportSerializer(policy.get_export_or_404(request.user, parse_id(pk))).data)

    @extend_schema(
        request=ExportRequestSerializer,
        responses={201: ExportSerializer},
        examples=[
            OpenApiExample(
                "A public bundle", value={"kind": "public", "findings": [12]}, request_only=True
            ),
            OpenApiExample(
                "A partner copy",
                value={"kind": "partner", "recipient": "carol", "project": "induction"},
                request_only=True,
            ),
        ],
    )
    def create(self, request: Request) -> Response:
        if not self._may_export():
            raise deny()
        data = parse_body(ExportRequestSerializer, request)
        try:
            export = check_request_export(
                kind=data["kind"],
                findings=data.get("findings", []),
                project=data.get("project"),
                recipient=data.get("recipient"),
                acting_user=request.user,
            )
        except ExportRefused as refused:
            raise exceptions.ValidationError(
                {"": [describe_blockers(refused.blockers)], **refused.blockers}
            ) from None
        return Response(ExportSerializer(export).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        responses={
            (200, "application/gzip"): OpenApiResponse(OpenApiTypes.BINARY, "the bundle"),
            410: OpenApiResponse(ErrorSerializer, "destroyed"),
            503: OpenApiResponse(ErrorSerializer, "cannot be decrypted now"),
        }
    )
    @action(detail=True, methods=["get"], content_negotiation_class=FirstRenderer)
    def download(self, request: Request, pk: str) -> StreamingHttpResponse:
        """The bundle (``.tar.gz``), audited like the web download."""
        export = policy.get_export_or_404(request.user, parse_id(pk))
        if not policy.can_download_export(request.user, export):
            raise deny()
        try:
            chunks = open_export(export)
        except FileNotFoundError:
            raise deny() from None
        except ArtifactUnavailable as exc:
            raise unavailable(f"export {export.pk}", exc) from None
        do_record_export_download(export, acting_user=request.user, ip=audit.client_ip(request))
        return stream_export(export, chunks)

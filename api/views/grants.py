"""Collaborator grants."""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.models import TokenScope
from api.serializers.grants import GrantCreateSerializer, GrantSerializer, RevokeSerializer
from api.serializers.review import GrantApprovalSerializer
from api.views.common import (
    ApiViewMixin,
    deny,
    parse_body,
    parse_id,
)
from disclosure import policy
from disclosure.actions.grants import check_give_grant, do_approve_grant, do_revoke_grant
from disclosure.models import Grant
from experiments.models import Finding

log = logging.getLogger(__name__)


class GrantViewSet(ApiViewMixin, viewsets.GenericViewSet[Grant]):
    """Collaborator grants of the projects you manage (release managers)."""

    queryset = Grant.objects.none()
    serializer_class = GrantSerializer
    lookup_value_regex = r"\d+"
    scopes = {
        "create": TokenScope.MANAGE,
        "revoke": TokenScope.MANAGE,
        "approve": TokenScope.MANAGE,
    }

    def get_queryset(self) -> QuerySet[Grant]:
        user = self.request.user
        projects = policy.manageable_projects(user)
        if not (policy.is_release_manager(user) or projects.exists()):
            raise deny()
        return (
            policy.manageable_grants(user)
            .select_related("user", "group", "project", "agreement", "granted_by")
            .order_by("-created_at", "-id")
        )

    def _grant(self, pk: Any) -> Grant:
        return policy.get_visible_or_404(self.get_queryset(), pk=parse_id(pk))

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(GrantSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(GrantSerializer(self._grant(pk)).data)

    @extend_schema(
        request=GrantCreateSerializer,
        responses={201: GrantSerializer},
        examples=[
            OpenApiExample(
                "A partner's access to a project",
                value={
                    "user": "carol",
                    "project": "induction",
                    "max_tier": 2,
                    "expires_at": "2027-06-30T23:59:00Z",
                    "note": "replication study",
                },
                request_only=True,
            )
        ],
    )
    def create(self, request: Request) -> Response:
        self.get_queryset()  # 404 for anyone who manages no project
        data = parse_body(GrantCreateSerializer, request)
        grant = check_give_grant(**data, acting_user=request.user)
        return Response(GrantSerializer(grant).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=RevokeSerializer,
        responses=GrantSerializer,
        examples=[OpenApiExample("Revoke", value={"reason": "study ended"}, request_only=True)],
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        """Revoke now: the grantee's next request no longer sees what it covered."""
        grant = self._grant(pk)
        project = (
            grant.project or Finding.objects.select_related("project").get(grants=grant).project
        )
        if not policy.can_manage_releases(request.user, project):
            raise deny()
        reason = parse_body(RevokeSerializer, request)["reason"]
        do_revoke_grant(grant, reason=reason, acting_user=request.user)
        return Response(GrantSerializer(self._grant(pk)).data)

    @extend_schema(
        request=GrantApprovalSerializer,
        responses=GrantSerializer,
        examples=[
            OpenApiExample(
                "Approve", value={"decision": "approve", "note": "checked"}, request_only=True
            ),
            OpenApiExample(
                "Decline", value={"decision": "decline", "note": "no agreement"}, request_only=True
            ),
        ],
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        """Approve or decline a grant a delegated manager gave above the team tier, which waits
        for this (separation of duties): a release manager other than its giver, who would not
        gain from it."""
        grant = self._grant(pk)
        if not policy.can_approve_grant(request.user, grant):
            raise deny()
        data = parse_body(GrantApprovalSerializer, request)
        do_approve_grant(
            grant,
            approve=data["decision"] == "approve",
            note=data["note"],
            acting_user=request.user,
        )
        return Response(GrantSerializer(self._grant(pk)).data)

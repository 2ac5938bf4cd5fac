"""Projects, and for lab admins and a project's delegates, its team."""

from __future__ import annotations

import logging

from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.models import TokenScope
from api.serializers.projects import (
    ProjectCreateSerializer,
    ProjectSerializer,
    TeamSerializer,
    UsernameSerializer,
)
from api.views.common import ApiViewMixin, deny, parse_body
from api.views.corpora import ProjectCorporaActions
from disclosure import policy
from disclosure.actions.delegation import (
    check_delegate_release_management,
    check_revoke_release_delegation,
)
from experiments.actions.projects import (
    check_add_project_member,
    check_create_project,
    check_remove_project_member,
)
from experiments.models import Project

log = logging.getLogger(__name__)

USERNAME = r"[\w.@+-]+"


def team(project: Project) -> dict[str, object]:
    return {
        "project": project.slug,
        "members": list(
            project.group.user_set.order_by("username").values_list("username", flat=True)
        ),
        "delegates": [u.username for u in policy.project_delegates(project)],
    }


class ProjectViewSet(ProjectCorporaActions, ApiViewMixin, viewsets.ReadOnlyModelViewSet[Project]):
    """Projects you are a member of; lab admins create projects, and lab admins and a project's
    delegates manage its team."""

    serializer_class = ProjectSerializer
    queryset = Project.objects.none()
    lookup_field = "slug"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"
    scopes = {
        "create": TokenScope.MANAGE,
        "team": TokenScope.MANAGE,
        "member": TokenScope.MANAGE,
        "delegates": TokenScope.MANAGE,
        "delegate": TokenScope.MANAGE,
        "corpora": TokenScope.SUBMIT,
    }

    def get_queryset(self) -> QuerySet[Project]:
        return policy.visible_projects(self.request.user)

    def get_object(self) -> Project:
        return policy.get_project_or_404(self.request.user, self.kwargs["slug"])

    def _team_project(self, slug: str) -> Project:
        return policy.get_team_managed_project_or_404(self.request.user, slug)

    @extend_schema(
        request=ProjectCreateSerializer,
        responses={201: ProjectSerializer},
        examples=[
            OpenApiExample(
                "A new project",
                value={"slug": "recall-probes", "name": "Recall probes", "description": ""},
                request_only=True,
            )
        ],
    )
    def create(self, request: Request) -> Response:
        """Create a project with an empty team (lab admins)."""
        if not policy.can_administer_lab(request.user):
            raise deny()
        data = parse_body(ProjectCreateSerializer, request)
        project = check_create_project(**data, acting_user=request.user)
        return Response(ProjectSerializer(project).data, status=status.HTTP_201_CREATED)

    @extend_schema(methods=["GET"], request=None, responses=TeamSerializer)
    @extend_schema(
        methods=["POST"],
        request=UsernameSerializer,
        responses={201: TeamSerializer},
        examples=[OpenApiExample("Add a member", value={"username": "bob"}, request_only=True)],
    )
    @action(detail=True, methods=["get", "post"], url_path="team")
    def team(self, request: Request, slug: str) -> Response:
        """The team and delegates; POST adds a member."""
        project = self._team_project(slug)
        if request.method == "POST":
            username = parse_body(UsernameSerializer, request)["username"]
            check_add_project_member(project, username, acting_user=request.user)
            return Response(team(project), status=status.HTTP_201_CREATED)
        return Response(team(project))

    @extend_schema(request=None, responses=TeamSerializer)
    @action(detail=True, methods=["delete"], url_path=f"team/(?P<username>{USERNAME})")
    def member(self, request: Request, slug: str, username: str) -> Response:
        """Remove a member from the team."""
        project = self._team_project(slug)
        check_remove_project_member(project, username, acting_user=request.user)
        return Response(team(project))

    @extend_schema(
        request=UsernameSerializer,
        responses={201: TeamSerializer},
        examples=[OpenApiExample("Delegate", value={"username": "dana"}, request_only=True)],
    )
    @action(detail=True, methods=["post"], url_path="delegates")
    def delegates(self, request: Request, slug: str) -> Response:
        """Delegate the project's release management to a user (lab admins)."""
        project = self._team_project(slug)
        if not policy.can_administer_lab(request.user):
            raise deny()
        username = parse_body(UsernameSerializer, request)["username"]
        with transaction.atomic():
            check_delegate_release_management(project, username, acting_user=request.user)
        return Response(team(project), status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses=TeamSerializer)
    @action(detail=True, methods=["delete"], url_path=f"delegates/(?P<username>{USERNAME})")
    def delegate(self, request: Request, slug: str, username: str) -> Response:
        """Take back a user's release management of the project (lab admins)."""
        project = self._team_project(slug)
        if not policy.can_administer_lab(request.user):
            raise deny()
        check_revoke_release_delegation(project, username, acting_user=request.user)
        return Response(team(project))

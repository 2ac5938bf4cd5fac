"""Projects."""

from __future__ import annotations

import logging

from django.db.models import QuerySet
from rest_framework import viewsets

from api.serializers.projects import ProjectSerializer
from api.views.common import (
    ApiViewMixin,
)
from disclosure import policy
from experiments.models import Project

log = logging.getLogger(__name__)


class ProjectViewSet(ApiViewMixin, viewsets.ReadOnlyModelViewSet[Project]):
    """Projects you are a member of."""

    serializer_class = ProjectSerializer
    queryset = Project.objects.none()
    lookup_field = "slug"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"

    def get_queryset(self) -> QuerySet[Project]:
        return policy.visible_projects(self.request.user)

    def get_object(self) -> Project:
        return policy.get_project_or_404(self.request.user, self.kwargs["slug"])

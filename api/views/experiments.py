"""Experiments (named groups of runs)."""

from __future__ import annotations

import logging
from typing import Any

from django.db.models import Count, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from api.serializers.experiments import ExperimentFilterSerializer, ExperimentSerializer
from api.views.common import (
    ApiViewMixin,
    parse_id,
    parse_query,
)
from disclosure import policy
from experiments.models import Experiment

log = logging.getLogger(__name__)


class ExperimentViewSet(ApiViewMixin, viewsets.ReadOnlyModelViewSet[Experiment]):
    """Experiments (named groups of runs) of your projects."""

    serializer_class = ExperimentSerializer
    queryset = Experiment.objects.none()
    lookup_value_regex = r"\d+"

    def get_queryset(self) -> QuerySet[Experiment]:
        projects = policy.visible_projects(self.request.user).values("pk")
        return (
            Experiment.objects.filter(project__in=projects)
            .select_related("project", "created_by")
            .annotate(n_runs=Count("runs"))
            .order_by("-created_at", "-id")
        )

    def get_object(self) -> Experiment:
        return policy.get_visible_or_404(self.get_queryset(), pk=parse_id(self.kwargs["pk"]))

    @extend_schema(parameters=[ExperimentFilterSerializer])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        query = parse_query(ExperimentFilterSerializer, request)
        experiments = self.get_queryset()
        if "project" in query:
            experiments = experiments.filter(project__slug=query["project"])
        page = self.paginate_queryset(experiments)
        return self.get_paginated_response(ExperimentSerializer(page, many=True).data)

"""Training runs: submit, follow, cancel, repeat."""

from __future__ import annotations

import logging
from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.models import TokenScope
from api.serializers.runs import (
    AnalysisSubmitSerializer,
    CancelResultSerializer,
    LogsQuerySerializer,
    LogsSerializer,
    MetricsQuerySerializer,
    MetricsSerializer,
    RerunSerializer,
    RunDetailSerializer,
    RunFilterSerializer,
    RunSerializer,
    RunSubmitSerializer,
)
from api.views.common import (
    ApiViewMixin,
    deny,
    parse_body,
    parse_id,
    parse_query,
)
from disclosure import policy
from experiments import presenters
from experiments.actions.runs import check_submit_analysis, check_submit_run, do_cancel_run
from experiments.models import MetricPoint, Run
from experiments.runconfig import build_run_config

log = logging.getLogger(__name__)


class RunViewSet(ApiViewMixin, viewsets.GenericViewSet[Run]):
    """Training runs of your projects: submit, follow, cancel, repeat."""

    queryset = Run.objects.none()
    serializer_class = RunSerializer
    lookup_value_regex = r"\d+"
    scopes = {
        "create": TokenScope.SUBMIT,
        "cancel": TokenScope.SUBMIT,
        "rerun": TokenScope.SUBMIT,
        "analyses": TokenScope.SUBMIT,
    }

    def _run(self, pk: Any) -> Run:
        return policy.get_run_or_404(self.request.user, parse_id(pk))

    def _managed_run(self, pk: Any) -> Run:
        run = self._run(pk)
        if not policy.can_manage_run(self.request.user, run):
            raise deny()
        return run

    @extend_schema(parameters=[RunFilterSerializer], responses=RunSerializer(many=True))
    def list(self, request: Request) -> Response:
        query = parse_query(RunFilterSerializer, request)
        runs = policy.visible_runs(request.user).select_related(
            "project", "experiment", "created_by"
        )
        lookups = {
            "project": "project__slug",
            "experiment": "experiment__name",
            "status": "status",
            "preset": "preset",
            "task": "task",
            "queue": "queue",
        }
        runs = runs.filter(**{lookups[k]: v for k, v in query.items()})
        page = self.paginate_queryset(runs)
        return self.get_paginated_response(RunSerializer(page, many=True).data)

    @extend_schema(
        request=RunSubmitSerializer,
        responses={201: RunSerializer},
        examples=[
            OpenApiExample(
                "H3 on induction head",
                value={
                    "project": "induction",
                    "experiment": "lr-sweep",
                    "name": "lr 5e-4",
                    "config": {
                        "preset": "h3",
                        "task": {"name": "induction_head", "vocab_size": 20, "seq_len": 30},
                        "train": {"steps": 2000, "lr": 5e-4, "batch_size": 32},
                    },
                    "n_layer": 2,
                    "d_model": 64,
                },
                request_only=True,
            )
        ],
    )
    def create(self, request: Request) -> Response:
        data = parse_body(RunSubmitSerializer, request)
        project = policy.get_project_or_404(request.user, data["project"])
        if not policy.can_submit_run(request.user, project):
            raise deny()
        config = build_run_config(
            project, data["config"], n_layer=data.get("n_layer"), d_model=data.get("d_model")
        )
        run = check_submit_run(
            project=project,
            config=config.to_dict(),
            experiment_name=data["experiment"],
            name=data["name"],
            queue=data["queue"],
            acting_user=request.user,
        )
        location = reverse("api-run-detail", args=[run.pk])
        body = RunSerializer(run).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})

    @extend_schema(responses=RunDetailSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(RunDetailSerializer(self._run(pk)).data)

    @extend_schema(parameters=[MetricsQuerySerializer], responses=MetricsSerializer)
    @action(detail=True, methods=["get"])
    def metrics(self, request: Request, pk: str) -> Response:
        """Metric points ordered by step. A page holds at most ``limit`` whole steps; pass
        ``next_after_step`` back as ``after_step`` for the next one."""
        run = self._run(pk)
        query = parse_query(MetricsQuerySerializer, request)
        points = MetricPoint.objects.filter(run=run)
        names = list(points.order_by("name").values_list("name", flat=True).distinct())
        wanted = [n for raw in query.get("name", []) for n in raw.split(",") if n]
        if wanted:
            points = points.filter(name__in=wanted)
        if "after_step" in query:
            points = points.filter(step__gt=query["after_step"])
        limit = query["limit"]
        steps = list(points.order_by("step").values_list("step", flat=True).distinct()[: limit + 1])
        next_after = None
        if len(steps) > limit:
            next_after = steps[limit - 1]
            points = points.filter(step__lte=next_after)
        rows = points.order_by("step", "name").values("name", "step", "value")
        body = {
            "run": run.pk,
            "status": run.status,
            "names": names,
            "points": list(rows),
            "next_after_step": next_after,
        }
        return Response(MetricsSerializer(body).data)

    @extend_schema(parameters=[LogsQuerySerializer], responses=LogsSerializer)
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str) -> Response:
        """The tail of the run's training log (kept once the run ends), its error and
        traceback."""
        run = self._run(pk)
        tail = parse_query(LogsQuerySerializer, request)["tail"]
        log = presenters.find_log(run.artifacts.all())
        lines = (presenters.log_tail(log, tail) or []) if log else []
        body = {
            "run": run.pk,
            "status": run.status,
            "source": log.name if log else None,
            "lines": lines,
            "error": run.error,
            "traceback": run.traceback,
        }
        return Response(LogsSerializer(body).data)

    @extend_schema(request=None, responses=CancelResultSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel a queued or running run. Idempotent: ``cancelled`` says whether this call
        stopped it."""
        run = self._managed_run(pk)
        done = do_cancel_run(run, acting_user=request.user)
        detail = (
            f"Run #{run.pk} cancelled."
            if done
            else f"Run #{run.pk} had already {run.status}; nothing to cancel."
        )
        body = {"cancelled": done, "detail": detail, "run": run}
        return Response(CancelResultSerializer(body).data)

    @extend_schema(
        request=RerunSerializer,
        responses={201: RunSerializer},
        examples=[
            OpenApiExample(
                "Again with a lower learning rate",
                value={"name": "lr 3e-4", "config": {"train": {"lr": 3e-4}}},
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["post"])
    def rerun(self, request: Request, pk: str) -> Response:
        """Submit a new run with the source run's config, with ``config`` overrides merged in."""
        source = self._managed_run(pk)
        data = parse_body(RerunSerializer, request)
        config = build_run_config(source.project, data.get("config", {}), base=source.config)
        run = check_submit_run(
            project=source.project,
            config=config.to_dict(),
            experiment_name=data.get("experiment", source.experiment.name),
            name=data.get("name", f"{source.name or f'run {source.pk}'} (again)"[:200]),
            queue=data.get("queue", source.queue),
            rerun_of=source,
            acting_user=request.user,
        )
        location = reverse("api-run-detail", args=[run.pk])
        body = RunSerializer(run).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})

    @extend_schema(
        request=AnalysisSubmitSerializer,
        responses={201: RunSerializer},
        examples=[
            OpenApiExample(
                "Zero-ablate each component on 32 test examples",
                value={"kind": "ablation", "examples": 32, "modes": ["zero"]},
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["post"])
    def analyses(self, request: Request, pk: str) -> Response:
        """Analyse a succeeded training run's checkpoint: ``evaluate``, ``probe``,
        ``ablation``, ``patching`` or ``steering``. The analysis is a run of its own (``kind``,
        ``source``) in the same project: follow, cancel and cite it like any run."""
        source = self._run(pk)
        if not policy.can_submit_run(request.user, source.project):
            raise deny()
        data = parse_body(AnalysisSubmitSerializer, request)
        kind, name, queue = data.pop("kind"), data.pop("name"), data.pop("queue", None)
        run = check_submit_analysis(
            source=source, kind=kind, spec=data, queue=queue, name=name, acting_user=request.user
        )
        location = reverse("api-run-detail", args=[run.pk])
        body = RunSerializer(run).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})

"""The API's views. Thin, like the pages: parse with a serializer, get objects and querysets
from :mod:`disclosure.policy`, call one action, present the result.

SECURITY: forbidden and missing look the same (404, via the policy's ``get_*_or_404``); a
refusal of something the user can see but may not change is a 404 too, as on the pages. Every
answer is ``Cache-Control: no-store`` because most hold restricted content.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api import serializers as s
from api.auth import HasScope
from api.errors import ErrorSerializer
from api.models import ApiToken, TokenScope
from disclosure import audit, policy
from disclosure.actions.exports import check_request_export, do_record_export_download
from disclosure.actions.grants import check_give_grant, do_revoke_grant
from disclosure.actions.release import do_request_release, do_request_review
from disclosure.actions.review import do_assess_finding
from disclosure.exports.build import open_export
from disclosure.exports.rules import ExportRefused, describe_blockers
from disclosure.models import Assessment, Export, Grant, ReleaseRequest, Vote
from experiments import actions, presenters
from experiments.forms import corpus_dir, project_corpora
from experiments.models import Artifact, Experiment, Finding, MetricPoint, Project, Run, Tier
from experiments.storage import ArtifactUnavailable, open_artifact
from h3lab.config import ConfigError, RunConfig, TaskConfig

log = logging.getLogger(__name__)


class Gone(exceptions.APIException):
    status_code = status.HTTP_410_GONE
    default_detail = "This finding was retracted."
    default_code = "retracted"


def _id(value: Any) -> int:
    """A path or query id; anything that is not a storable id is simply not found."""
    try:
        pk = int(value)
    except (TypeError, ValueError):
        raise exceptions.NotFound("Not found.") from None
    if not 1 <= pk <= s.MAX_ID:
        raise exceptions.NotFound("Not found.")
    return pk


def _query(serializer: type[serializers.Serializer], request: Request) -> dict[str, Any]:
    parsed = serializer(data=request.query_params)
    parsed.is_valid(raise_exception=True)
    return dict(parsed.validated_data)


def _body(serializer: type[serializers.Serializer], request: Request, **kw: Any) -> dict[str, Any]:
    parsed = serializer(data=request.data, context={"request": request}, **kw)
    parsed.is_valid(raise_exception=True)
    return dict(parsed.validated_data)


def _deny() -> exceptions.NotFound:
    return exceptions.NotFound("Not found.")


class ApiViewMixin:
    """Scopes, permissions and caching shared by every API view."""

    permission_classes = [IsAuthenticated, HasScope]
    # Unsafe action → the token scope it needs (reads need "read"; unlisted ones "manage").
    scopes: dict[str, str] = {}

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[misc]
        add_never_cache_headers(response)
        return response


# --- root and me -------------------------------------------------------------------------------


class RootSerializer(serializers.Serializer):
    version = serializers.CharField()
    schema = serializers.CharField()
    docs = serializers.CharField()
    endpoints = serializers.DictField(child=serializers.CharField())


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
    @extend_schema(responses=s.MeSerializer)
    def get(self, request: Request) -> Response:
        user = request.user
        token = request.auth if isinstance(request.auth, ApiToken) else None
        return Response(
            s.MeSerializer(
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


# --- projects and experiments ------------------------------------------------------------------


class ProjectViewSet(ApiViewMixin, viewsets.ReadOnlyModelViewSet):
    """Projects you are a member of."""

    serializer_class = s.ProjectSerializer
    queryset = Project.objects.none()
    lookup_field = "slug"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"

    def get_queryset(self) -> QuerySet[Project]:
        return policy.visible_projects(self.request.user)

    def get_object(self) -> Project:
        return policy.get_project_or_404(self.request.user, self.kwargs["slug"])


class ExperimentFilterSerializer(serializers.Serializer):
    project = serializers.SlugField(required=False)


class ExperimentViewSet(ApiViewMixin, viewsets.ReadOnlyModelViewSet):
    """Experiments (named groups of runs) of your projects."""

    serializer_class = s.ExperimentSerializer
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
        return policy.get_visible_or_404(self.get_queryset(), pk=_id(self.kwargs["pk"]))

    @extend_schema(parameters=[ExperimentFilterSerializer])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        query = _query(ExperimentFilterSerializer, request)
        experiments = self.get_queryset()
        if "project" in query:
            experiments = experiments.filter(project__slug=query["project"])
        page = self.paginate_queryset(experiments)
        return self.get_paginated_response(s.ExperimentSerializer(page, many=True).data)


# --- runs --------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` merged into ``base`` section by section (nested dicts merge)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _checked_corpus(project: Project, config: dict[str, Any]) -> dict[str, Any]:
    """SECURITY: a text/jsonl task reads the file at ``task.path`` on the worker. Through the
    API it may only name a file uploaded to the project (by name, or by its stored path) —
    never an arbitrary path on the server."""
    task = config.get("task")
    if not isinstance(task, dict) or not task.get("path") or not isinstance(task["path"], str):
        return config
    folder = corpus_dir(project).resolve()
    candidate = Path(task["path"])
    resolved = (candidate if candidate.is_absolute() else folder / candidate).resolve()
    if resolved.parent != folder or not resolved.is_file():
        uploaded = ", ".join(project_corpora(project)) or "none uploaded yet"
        raise exceptions.ValidationError(
            {"config": {"task.path": [f"name a file uploaded to this project ({uploaded})"]}}
        )
    return {**config, "task": {**task, "path": str(resolved)}}


def _with_model(config: dict[str, Any], *, n_layer: int, d_model: int) -> dict[str, Any]:
    """A config without a ``model`` section gets the model its ``preset`` names at the given
    depth and width (RunConfig.build, as the web form does); with one, it is used as given."""
    if "model" in config or not isinstance(config.get("task", {}), dict):
        return config
    try:
        task = TaskConfig(**config.get("task", {}))
        built = RunConfig.build(
            preset=str(config.get("preset", "h3")), n_layer=n_layer, d_model=d_model, task=task
        )
    except ConfigError:
        raise
    except (TypeError, ValueError):
        return config  # RunConfig.from_dict names the bad field precisely
    return {**config, "model": built.model.to_dict()}


class RunViewSet(ApiViewMixin, viewsets.GenericViewSet):
    """Training runs of your projects: submit, follow, cancel, repeat."""

    queryset = Run.objects.none()
    serializer_class = s.RunSerializer
    lookup_value_regex = r"\d+"
    scopes = {"create": TokenScope.SUBMIT, "cancel": TokenScope.SUBMIT, "rerun": TokenScope.SUBMIT}

    def _run(self, pk: Any) -> Run:
        return policy.get_run_or_404(self.request.user, _id(pk))

    def _managed_run(self, pk: Any) -> Run:
        run = self._run(pk)
        if not policy.can_manage_run(self.request.user, run):
            raise _deny()
        return run

    @extend_schema(parameters=[s.RunFilterSerializer], responses=s.RunSerializer(many=True))
    def list(self, request: Request) -> Response:
        query = _query(s.RunFilterSerializer, request)
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
        return self.get_paginated_response(s.RunSerializer(page, many=True).data)

    @extend_schema(request=s.RunSubmitSerializer, responses={201: s.RunSerializer})
    def create(self, request: Request) -> Response:
        data = _body(s.RunSubmitSerializer, request)
        project = policy.get_project_or_404(request.user, data["project"])
        if not policy.can_submit_run(request.user, project):
            raise _deny()
        config = _with_model(
            data["config"], n_layer=data.get("n_layer", 2), d_model=data.get("d_model", 64)
        )
        run = actions.check_submit_run(
            project=project,
            config=_checked_corpus(project, config),
            experiment_name=data["experiment"],
            name=data["name"],
            queue=data["queue"],
            acting_user=request.user,
        )
        location = reverse("api-run-detail", args=[run.pk])
        body = s.RunSerializer(run).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})

    @extend_schema(responses=s.RunDetailSerializer)
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(s.RunDetailSerializer(self._run(pk)).data)

    @extend_schema(parameters=[s.MetricsQuerySerializer], responses=s.MetricsSerializer)
    @action(detail=True, methods=["get"])
    def metrics(self, request: Request, pk: str) -> Response:
        """Metric points ordered by step. A page holds at most ``limit`` whole steps; pass
        ``next_after_step`` back as ``after_step`` for the next one."""
        run = self._run(pk)
        query = _query(s.MetricsQuerySerializer, request)
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
        return Response(s.MetricsSerializer(body).data)

    @extend_schema(parameters=[s.LogsQuerySerializer], responses=s.LogsSerializer)
    @action(detail=True, methods=["get"])
    def logs(self, request: Request, pk: str) -> Response:
        """The tail of the run's training log (kept once the run ends), its error and
        traceback."""
        run = self._run(pk)
        tail = _query(s.LogsQuerySerializer, request)["tail"]
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
        return Response(s.LogsSerializer(body).data)

    @extend_schema(request=None, responses=s.CancelResultSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Cancel a queued or running run. Idempotent: ``cancelled`` says whether this call
        stopped it."""
        run = self._managed_run(pk)
        done = actions.do_cancel_run(run, acting_user=request.user)
        detail = (
            f"Run #{run.pk} cancelled."
            if done
            else f"Run #{run.pk} had already {run.status}; nothing to cancel."
        )
        body = {"cancelled": done, "detail": detail, "run": run}
        return Response(s.CancelResultSerializer(body).data)

    @extend_schema(request=s.RerunSerializer, responses={201: s.RunSerializer})
    @action(detail=True, methods=["post"])
    def rerun(self, request: Request, pk: str) -> Response:
        """Submit a new run with the source run's config, with ``config`` overrides merged in."""
        source = self._managed_run(pk)
        data = _body(s.RerunSerializer, request)
        config = _merge(source.config, data.get("config", {}))
        run = actions.check_submit_run(
            project=source.project,
            config=_checked_corpus(source.project, config),
            experiment_name=data.get("experiment", source.experiment.name),
            name=data.get("name", f"{source.name or f'run {source.pk}'} (again)"[:200]),
            queue=data.get("queue", source.queue),
            rerun_of=source,
            acting_user=request.user,
        )
        location = reverse("api-run-detail", args=[run.pk])
        body = s.RunSerializer(run).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})


# --- artifacts ---------------------------------------------------------------------------------


class FirstRenderer(BaseContentNegotiation):
    """The download answers bytes whatever the client accepts (and errors as JSON)."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0]

    def select_renderer(
        self, request: Request, renderers: list[Any], format_suffix: str | None = None
    ) -> tuple[Any, str]:
        return renderers[0], renderers[0].media_type


class ArtifactViewSet(ApiViewMixin, viewsets.ReadOnlyModelViewSet):
    """Files produced by runs. Team members see their runs' artifacts; anyone else sees the
    evidence cited by findings they can read (anonymous users: public findings)."""

    serializer_class = s.ArtifactSerializer
    queryset = Artifact.objects.none()
    lookup_value_regex = r"\d+"
    permission_classes = [AllowAny, HasScope]

    def get_queryset(self) -> QuerySet[Artifact]:
        return policy.visible_artifacts(self.request.user).select_related("project")

    def get_object(self) -> Artifact:
        return policy.get_artifact_or_404(self.request.user, _id(self.kwargs["pk"]))

    @extend_schema(parameters=[s.ArtifactFilterSerializer])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        query = _query(s.ArtifactFilterSerializer, request)
        lookups = {"run": "run_id", "project": "project__slug", "kind": "kind"}
        artifacts = self.get_queryset().filter(**{lookups[k]: v for k, v in query.items()})
        page = self.paginate_queryset(artifacts.order_by("-created_at", "-id"))
        return self.get_paginated_response(s.ArtifactSerializer(page, many=True).data)

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
            raise _deny() from None
        except ArtifactUnavailable as exc:
            raise _unavailable(f"artifact {artifact.pk}", exc) from None
        actions.do_record_artifact_download(artifact, acting_user=request.user)
        response = StreamingHttpResponse(chunks, content_type="application/octet-stream")
        response["Content-Length"] = str(artifact.size)
        response["Content-Disposition"] = content_disposition_header(True, artifact.name) or ""
        response["X-Checksum-SHA256"] = artifact.sha256
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "sandbox; default-src 'none'"
        return response


# --- findings ----------------------------------------------------------------------------------


def _findings_with_evidence(findings: QuerySet[Finding]) -> QuerySet[Finding]:
    # Four queries for a page: findings (joined to project and author), then the run ids,
    # artifact ids and snapshots of the whole page.
    return findings.select_related("project", "created_by").prefetch_related(
        Prefetch("runs", queryset=Run.objects.only("pk")),
        Prefetch("artifacts", queryset=Artifact.objects.only("pk")),
        "snapshots",
    )


class FindingViewSet(ApiViewMixin, viewsets.GenericViewSet):
    """Findings you can read (public ones for everyone); recording, editing and the review
    steps for the roles the policy allows them."""

    queryset = Finding.objects.none()
    serializer_class = s.FindingSerializer
    lookup_value_regex = r"\d+"
    http_method_names = ["get", "post", "patch", "head", "options"]
    scopes = {
        "create": TokenScope.SUBMIT,
        "partial_update": TokenScope.SUBMIT,
        "request_review": TokenScope.MANAGE,
        "request_release": TokenScope.MANAGE,
        "assessments": TokenScope.MANAGE,
    }

    def get_permissions(self) -> list[Any]:
        if self.action in ("list", "retrieve"):
            return [AllowAny(), HasScope()]
        return super().get_permissions()

    def _finding(self, pk: Any) -> Finding:
        return policy.get_finding_or_404(self.request.user, _id(pk))

    def _allowed(self, pk: Any, check: Any) -> Finding:
        finding = self._finding(pk)
        if not check(self.request.user, finding):
            raise _deny()
        return finding

    @extend_schema(parameters=[s.FindingFilterSerializer], responses=s.FindingSerializer(many=True))
    def list(self, request: Request) -> Response:
        query = _query(s.FindingFilterSerializer, request)
        findings = policy.visible_findings(request.user)
        if "project" in query:
            findings = findings.filter(project__slug=query["project"])
        if "tier" in query:
            findings = findings.filter(tier=query["tier"])
        if "status" in query:
            findings = findings.filter(status=query["status"])
        if query.get("q"):
            findings = findings.filter(title__icontains=query["q"])
        page = self.paginate_queryset(_findings_with_evidence(findings))
        return self.get_paginated_response(s.FindingSerializer(page, many=True).data)

    @extend_schema(
        responses={200: s.FindingSerializer, 410: OpenApiResponse(ErrorSerializer, "retracted")}
    )
    def retrieve(self, request: Request, pk: str) -> Response:
        finding, readable = policy.get_finding_or_tombstone_or_404(request.user, _id(pk))
        if not readable:
            raise Gone(f"Finding #{finding.pk} was retracted: {finding.retraction_reason}")
        if finding.tier < Tier.PUBLIC or finding.is_retracted:
            audit.record(request.user, "finding.view", finding, ip=audit.client_ip(request))
        finding = _findings_with_evidence(Finding.objects.filter(pk=finding.pk)).get()
        return Response(s.FindingSerializer(finding).data)

    @extend_schema(request=s.FindingCreateSerializer, responses={201: s.FindingSerializer})
    def create(self, request: Request) -> Response:
        data = _body(s.FindingCreateSerializer, request)
        runs: list[Run] = data["runs"]
        if not all(policy.can_manage_run(request.user, run) for run in runs):
            raise _deny()
        finding = actions.do_record_finding(
            project=runs[0].project,
            title=data["title"],
            body=data["body"],
            runs=runs,
            artifacts=data.get("artifacts", []),
            snapshot_metrics=[(run, name) for run in runs for name in data.get("metrics", [])],
            acting_user=request.user,
        )
        finding = _findings_with_evidence(Finding.objects.filter(pk=finding.pk)).get()
        location = reverse("api-finding-detail", args=[finding.pk])
        body = s.FindingSerializer(finding).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})

    @extend_schema(request=s.FindingEditSerializer, responses=s.FindingSerializer)
    def partial_update(self, request: Request, pk: str) -> Response:
        finding = self._allowed(pk, policy.can_edit_finding)
        data = _body(s.FindingEditSerializer, request, partial=True)
        actions.do_edit_finding(
            finding,
            title=data.get("title", finding.title),
            body=data.get("body", finding.body),
            acting_user=request.user,
        )
        finding = _findings_with_evidence(Finding.objects.filter(pk=finding.pk)).get()
        return Response(s.FindingSerializer(finding).data)

    def _release_answer(self, request: ReleaseRequest) -> Response:
        request = ReleaseRequest.objects.select_related("requested_by").get(pk=request.pk)
        return Response(s.ReleaseRequestSerializer(request).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.RationaleSerializer, responses={201: s.ReleaseRequestSerializer})
    @action(detail=True, methods=["post"], url_path="request-review")
    def request_review(self, request: Request, pk: str) -> Response:
        """Team → review tier (decided at once under the default policy)."""
        finding = self._allowed(pk, policy.can_request_review)
        rationale = _body(s.RationaleSerializer, request)["rationale"]
        release = do_request_review(finding, rationale=rationale, acting_user=request.user)
        return self._release_answer(release)

    @extend_schema(request=s.RationaleSerializer, responses={201: s.ReleaseRequestSerializer})
    @action(detail=True, methods=["post"], url_path="request-release")
    def request_release(self, request: Request, pk: str) -> Response:
        """Ask for the step above review (reviewers vote; a release manager schedules)."""
        finding = self._allowed(pk, policy.can_request_release)
        rationale = _body(s.RationaleSerializer, request)["rationale"]
        release = do_request_release(finding, rationale=rationale, acting_user=request.user)
        return self._release_answer(release)

    @extend_schema(methods=["GET"], responses=s.AssessmentSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request=s.AssessmentCreateSerializer,
        responses={201: s.AssessmentSerializer},
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def assessments(self, request: Request, pk: str) -> Response:
        """Dual-use assessments: read by the team, reviewers and release managers; a reviewer
        outside the team (not recused) records or replaces their own."""
        if request.method == "GET":
            finding = self._allowed(pk, policy.can_see_review)
            rows = Assessment.objects.filter(finding=finding).select_related("reviewer")
            return Response(s.AssessmentSerializer(rows, many=True).data)
        finding = self._allowed(pk, policy.can_review)
        data = _body(s.AssessmentCreateSerializer, request)
        assessment = do_assess_finding(finding, **data, acting_user=request.user)
        return Response(s.AssessmentSerializer(assessment).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=s.ReleaseRequestSerializer(many=True))
    @action(detail=True, methods=["get"], url_path="release-requests", pagination_class=None)
    def release_requests(self, request: Request, pk: str) -> Response:
        """The finding's release requests with their votes and, while pending, the gates that
        still hold it back."""
        finding = self._allowed(pk, policy.can_see_review)
        rows = (
            ReleaseRequest.objects.filter(finding=finding)
            .select_related("requested_by")
            .prefetch_related(Prefetch("votes", queryset=Vote.objects.select_related("reviewer")))
        )
        return Response(s.ReleaseRequestSerializer(rows, many=True).data)


# --- grants ------------------------------------------------------------------------------------


class GrantViewSet(ApiViewMixin, viewsets.GenericViewSet):
    """Collaborator grants of the projects you manage (release managers)."""

    queryset = Grant.objects.none()
    serializer_class = s.GrantSerializer
    lookup_value_regex = r"\d+"
    scopes = {"create": TokenScope.MANAGE, "revoke": TokenScope.MANAGE}

    def get_queryset(self) -> QuerySet[Grant]:
        user = self.request.user
        projects = policy.manageable_projects(user)
        if not (policy.is_release_manager(user) or projects.exists()):
            raise _deny()
        ids = projects.values("pk")
        return (
            Grant.objects.filter(Q(project__in=ids) | Q(finding__project__in=ids))
            .select_related("user", "group", "project", "agreement", "granted_by")
            .order_by("-created_at", "-id")
        )

    def _grant(self, pk: Any) -> Grant:
        return policy.get_visible_or_404(self.get_queryset(), pk=_id(pk))

    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(s.GrantSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(s.GrantSerializer(self._grant(pk)).data)

    @extend_schema(request=s.GrantCreateSerializer, responses={201: s.GrantSerializer})
    def create(self, request: Request) -> Response:
        self.get_queryset()  # 404 for anyone who manages no project
        data = _body(s.GrantCreateSerializer, request)
        grant = check_give_grant(**data, acting_user=request.user)
        return Response(s.GrantSerializer(grant).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.RevokeSerializer, responses=s.GrantSerializer)
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        """Revoke now: the grantee's next request no longer sees what it covered."""
        grant = self._grant(pk)
        project = (
            grant.project or Finding.objects.select_related("project").get(grants=grant).project
        )
        if not policy.can_manage_releases(request.user, project):
            raise _deny()
        reason = _body(s.RevokeSerializer, request)["reason"]
        do_revoke_grant(grant, reason=reason, acting_user=request.user)
        return Response(s.GrantSerializer(self._grant(pk)).data)


# --- exports -----------------------------------------------------------------------------------


class Unavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The content cannot be produced right now; the operators have been told."
    default_code = "unavailable"


class Destroyed(exceptions.APIException):
    status_code = status.HTTP_410_GONE
    default_detail = "This content was destroyed when its finding was retracted."
    default_code = "destroyed"


def _unavailable(what: str, exc: ArtifactUnavailable) -> exceptions.APIException:
    # SECURITY: the reason given is generic; the detail goes to the operators' log.
    log.error("%s unavailable: %s", what, exc)
    return Destroyed() if exc.reason == "destroyed" else Unavailable()


class ExportViewSet(ApiViewMixin, viewsets.GenericViewSet):
    """Publication bundles and partner copies: release managers request them; the requester
    and a partner copy's recipient (while still granted) download them."""

    queryset = Export.objects.none()
    serializer_class = s.ExportSerializer
    lookup_value_regex = r"\d+"
    scopes = {"create": TokenScope.MANAGE}

    def _may_export(self) -> bool:
        return policy.manageable_projects(self.request.user).exists()

    def list(self, request: Request) -> Response:
        mine = policy.visible_exports(request.user).select_related(
            "recipient", "created_by", "project"
        )
        if not (self._may_export() or mine.exists()):
            raise _deny()
        page = self.paginate_queryset(mine.prefetch_related("findings"))
        return self.get_paginated_response(s.ExportSerializer(page, many=True).data)

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(s.ExportSerializer(policy.get_export_or_404(request.user, _id(pk))).data)

    @extend_schema(request=s.ExportRequestSerializer, responses={201: s.ExportSerializer})
    def create(self, request: Request) -> Response:
        if not self._may_export():
            raise _deny()
        data = _body(s.ExportRequestSerializer, request)
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
        return Response(s.ExportSerializer(export).data, status=status.HTTP_201_CREATED)

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
        export = policy.get_export_or_404(request.user, _id(pk))
        if not policy.can_download_export(request.user, export):
            raise _deny()
        try:
            chunks = open_export(export)
        except FileNotFoundError:
            raise _deny() from None
        except ArtifactUnavailable as exc:
            raise _unavailable(f"export {export.pk}", exc) from None
        do_record_export_download(export, acting_user=request.user, ip=audit.client_ip(request))
        response = StreamingHttpResponse(chunks, content_type="application/gzip")
        response["Content-Length"] = str(export.size)
        response["Content-Disposition"] = content_disposition_header(True, export.filename) or ""
        response["X-Checksum-SHA256"] = export.sha256
        response["X-Content-Type-Options"] = "nosniff"
        return response

"""Findings: recording, editing and the review steps."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.db.models import Prefetch, QuerySet
from django.urls import reverse
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import exceptions, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response

from api.auth import HasScope
from api.errors import ErrorSerializer
from api.models import TokenScope
from api.serializers.findings import (
    AssessmentCreateSerializer,
    AssessmentSerializer,
    FindingCreateSerializer,
    FindingEditSerializer,
    FindingFilterSerializer,
    FindingRevisionSerializer,
    FindingSerializer,
    RationaleSerializer,
    ReleaseRequestSerializer,
)
from api.views.common import (
    ApiViewMixin,
    deny,
    parse_body,
    parse_id,
    parse_query,
)
from api.views.review import REVIEW_SCOPES, FindingReviewActions
from disclosure import audit, policy
from disclosure.actions.release import do_request_release, do_request_review
from disclosure.actions.review import do_assess_finding
from disclosure.actions.revisions import check_propose_revision
from disclosure.models import Assessment, ReleaseRequest, Vote
from experiments.actions.findings import check_record_finding, do_edit_finding
from experiments.models import Artifact, Finding, Run, Tier

if TYPE_CHECKING:
    from rest_framework.permissions import _SupportsHasPermission

log = logging.getLogger(__name__)


class Gone(exceptions.APIException):
    status_code = status.HTTP_410_GONE
    default_detail = "This finding was retracted."
    default_code = "retracted"


def _findings_with_evidence(findings: QuerySet[Finding]) -> QuerySet[Finding]:
    # Four queries for a page: findings (joined to project and author), then the run ids,
    # artifact ids and snapshots of the whole page.
    return findings.select_related("project", "created_by").prefetch_related(
        Prefetch("runs", queryset=Run.objects.only("pk")),
        Prefetch("artifacts", queryset=Artifact.objects.only("pk")),
        "snapshots",
    )


class FindingViewSet(FindingReviewActions, ApiViewMixin, viewsets.GenericViewSet[Finding]):
    """Findings you can read (public ones for everyone); recording, editing and the review
    steps for the roles the policy allows them."""

    queryset = Finding.objects.none()
    serializer_class = FindingSerializer
    lookup_value_regex = r"\d+"
    http_method_names = ["get", "post", "patch", "head", "options"]
    scopes = {
        "create": TokenScope.SUBMIT,
        "partial_update": TokenScope.SUBMIT,
        "request_review": TokenScope.MANAGE,
        "request_release": TokenScope.MANAGE,
        "assessments": TokenScope.MANAGE,
        **REVIEW_SCOPES,
    }

    def get_permissions(self) -> Sequence[_SupportsHasPermission]:
        reads = ("list", "retrieve", "revisions")
        if self.action in reads and self.request.method in ("GET", "HEAD", "OPTIONS"):
            return [AllowAny(), HasScope()]
        return super().get_permissions()

    def _finding(self, pk: Any) -> Finding:
        return policy.get_finding_or_404(self.request.user, parse_id(pk))

    def _allowed(self, pk: Any, check: Any) -> Finding:
        finding = self._finding(pk)
        if not check(self.request.user, finding):
            raise deny()
        return finding

    @extend_schema(parameters=[FindingFilterSerializer], responses=FindingSerializer(many=True))
    def list(self, request: Request) -> Response:
        query = parse_query(FindingFilterSerializer, request)
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
        return self.get_paginated_response(FindingSerializer(page, many=True).data)

    @extend_schema(
        responses={200: FindingSerializer, 410: OpenApiResponse(ErrorSerializer, "retracted")}
    )
    def retrieve(self, request: Request, pk: str) -> Response:
        finding, readable = policy.get_finding_or_tombstone_or_404(request.user, parse_id(pk))
        if not readable:
            raise Gone(f"Finding #{finding.pk} was retracted: {finding.retraction_reason}")
        if finding.tier < Tier.PUBLIC or finding.is_retracted:
            audit.record(request.user, "finding.view", finding, ip=audit.client_ip(request))
        finding = _findings_with_evidence(Finding.objects.filter(pk=finding.pk)).get()
        return Response(FindingSerializer(finding).data)

    @extend_schema(
        request=FindingCreateSerializer,
        responses={201: FindingSerializer},
        examples=[
            OpenApiExample(
                "From a run, freezing its accuracy",
                value={
                    "title": "Induction heads form at step 400",
                    "body": "Accuracy jumps from 0.2 to 0.97 between steps 300 and 500.",
                    "runs": [42],
                    "artifacts": [317],
                    "metrics": ["test_accuracy"],
                },
                request_only=True,
            )
        ],
    )
    def create(self, request: Request) -> Response:
        data = parse_body(FindingCreateSerializer, request)
        runs: list[Run] = data["runs"]
        if not all(policy.can_manage_run(request.user, run) for run in runs):
            raise deny()
        finding = check_record_finding(**data, acting_user=request.user)
        finding = _findings_with_evidence(Finding.objects.filter(pk=finding.pk)).get()
        location = reverse("api-finding-detail", args=[finding.pk])
        body = FindingSerializer(finding).data
        return Response(body, status=status.HTTP_201_CREATED, headers={"Location": location})

    @extend_schema(
        request=FindingEditSerializer,
        responses={200: FindingSerializer, 202: FindingRevisionSerializer},
        examples=[
            OpenApiExample(
                "Fix the title",
                value={"title": "Induction heads form at step 400", "note": "typo"},
                request_only=True,
            )
        ],
    )
    def partial_update(self, request: Request, pk: str) -> Response:
        """Edit a finding. A team-tier finding changes at once (200, the finding). Above the
        team tier its content is frozen: the edit becomes a revision reviewed to the
        finding's tier (202, the revision); readers keep the current text until approval."""
        finding = self._allowed(pk, policy.can_revise_finding)
        data = parse_body(FindingEditSerializer, request, partial=True)
        title, body = data.get("title", finding.title), data.get("body", finding.body)
        note = data.get("note", "")
        if finding.tier == Tier.TEAM:
            do_edit_finding(finding, title=title, body=body, note=note, acting_user=request.user)
            finding = _findings_with_evidence(Finding.objects.filter(pk=finding.pk)).get()
            return Response(FindingSerializer(finding).data)
        revision = check_propose_revision(
            finding, title=title, body=body, note=note, acting_user=request.user
        )
        return Response(FindingRevisionSerializer(revision).data, status=status.HTTP_202_ACCEPTED)

    def _release_answer(self, request: ReleaseRequest) -> Response:
        request = ReleaseRequest.objects.select_related("requested_by").get(pk=request.pk)
        return Response(ReleaseRequestSerializer(request).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=RationaleSerializer,
        responses={201: ReleaseRequestSerializer},
        examples=[
            OpenApiExample(
                "Ask for review",
                value={"rationale": "Ready for a dual-use assessment."},
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["post"], url_path="request-review")
    def request_review(self, request: Request, pk: str) -> Response:
        """Team → review tier (decided at once under the default policy)."""
        finding = self._allowed(pk, policy.can_request_review)
        rationale = parse_body(RationaleSerializer, request)["rationale"]
        release = do_request_review(finding, rationale=rationale, acting_user=request.user)
        return self._release_answer(release)

    @extend_schema(
        request=RationaleSerializer,
        responses={201: ReleaseRequestSerializer},
        examples=[
            OpenApiExample(
                "Ask for the next tier",
                value={"rationale": "Partners need it for their replication."},
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["post"], url_path="request-release")
    def request_release(self, request: Request, pk: str) -> Response:
        """Ask for the step above review (reviewers vote; a release manager schedules)."""
        finding = self._allowed(pk, policy.can_request_release)
        rationale = parse_body(RationaleSerializer, request)["rationale"]
        release = do_request_release(finding, rationale=rationale, acting_user=request.user)
        return self._release_answer(release)

    @extend_schema(methods=["GET"], responses=AssessmentSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request=AssessmentCreateSerializer,
        responses={201: AssessmentSerializer},
        examples=[
            OpenApiExample(
                "Mostly alignment value",
                value={
                    "capability_uplift": 0,
                    "alignment_value": 2,
                    "rationale": "Explains a mechanism; no new capability.",
                    "categories": ["interpretability"],
                    "evidence_links": [],
                },
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def assessments(self, request: Request, pk: str) -> Response:
        """Dual-use assessments: read by the team, reviewers and release managers; a reviewer
        outside the team (not recused) records or replaces their own."""
        if request.method == "GET":
            finding = self._allowed(pk, policy.can_see_review)
            rows = Assessment.objects.filter(finding=finding).select_related("reviewer")
            return Response(AssessmentSerializer(rows, many=True).data)
        finding = self._allowed(pk, policy.can_review)
        data = parse_body(AssessmentCreateSerializer, request)
        assessment = do_assess_finding(finding, **data, acting_user=request.user)
        return Response(AssessmentSerializer(assessment).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=ReleaseRequestSerializer(many=True))
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
        return Response(ReleaseRequestSerializer(rows, many=True).data)

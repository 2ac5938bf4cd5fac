"""The review flow on a finding — votes, recusal, scheduling, retraction, revisions — and
objections. Each endpoint asks :mod:`disclosure.policy` exactly what the matching web view
(disclosure/views.py, disclosure/revision_views.py) asks, and calls the same action; a refusal
is the same 404 as a missing object."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.core.exceptions import ValidationError
from django.db.models import Prefetch, QuerySet
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.models import TokenScope
from api.serializers.findings import (
    FindingRevisionSerializer,
    FindingSerializer,
    ReleaseRequestSerializer,
    VoteSerializer,
)
from api.serializers.review import (
    ClearObjectionSerializer,
    ClearResultSerializer,
    ObjectionSerializer,
    RecusalSerializer,
    RecuseSerializer,
    RetractSerializer,
    RevisionProposeSerializer,
    RevisionWithdrawResultSerializer,
    RevisionWithdrawSerializer,
    ScheduleSerializer,
    VoteCreateSerializer,
    WithdrawObjectionSerializer,
)
from api.views.common import ApiViewMixin, deny, parse_body, parse_id
from disclosure import policy
from disclosure.actions.release import check_schedule_release
from disclosure.actions.retraction import do_retract_finding
from disclosure.actions.review import (
    do_clear_objection,
    do_recuse,
    do_vote,
    do_withdraw_objection,
)
from disclosure.actions.revisions import (
    check_propose_revision,
    do_withdraw_pending_revision,
    pending_revision,
)
from disclosure.models import ObjectionClearance, ReleaseRequest, Vote, VoteKind
from experiments.models import Finding

REVIEW_SCOPES = {
    "votes": TokenScope.MANAGE,
    "recuse": TokenScope.MANAGE,
    "schedule": TokenScope.MANAGE,
    "retract": TokenScope.MANAGE,
    "revisions": TokenScope.SUBMIT,  # proposing one is an edit, like PATCH
    "withdraw_revision": TokenScope.SUBMIT,
}


def _pending(finding: Finding) -> ReleaseRequest:
    """The finding's pending request (the web form's "no request is pending" as a 400)."""
    pending = ReleaseRequest.objects.pending().filter(finding=finding).first()
    if pending is None:
        raise ValidationError("No request is pending for this finding.")
    return pending


if TYPE_CHECKING:
    _FindingViews = viewsets.GenericViewSet[Finding]
else:
    _FindingViews = object


class FindingReviewActions(_FindingViews):
    """Review steps on ``/api/v1/findings/{id}/…``, mixed into the findings view set (which
    provides ``_finding`` and ``_allowed``)."""

    _finding: Any
    _allowed: Any

    @extend_schema(methods=["GET"], request=None, responses=VoteSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request=VoteCreateSerializer,
        responses={201: VoteSerializer},
        examples=[
            OpenApiExample(
                "Approve", value={"kind": "approve", "rationale": ""}, request_only=True
            ),
            OpenApiExample(
                "Object (blocks the step)",
                value={"kind": "object", "rationale": "The probe code reveals the trick."},
                request_only=True,
            ),
        ],
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def votes(self, request: Request, pk: str) -> Response:
        """Votes on the finding's pending request (the team, reviewers and release managers
        read them); a reviewer outside the team who has not recused approves or objects, once
        per request. An objection is a vote of ``kind`` ``object``."""
        if request.method == "GET":
            finding = self._allowed(pk, policy.can_see_review)
            pending = ReleaseRequest.objects.pending().filter(finding=finding).first()
            rows = (
                Vote.objects.filter(request=pending).select_related("reviewer")
                if pending
                else Vote.objects.none()
            )
            return Response(VoteSerializer(rows, many=True).data)
        finding = self._allowed(pk, policy.can_review)
        data = parse_body(VoteCreateSerializer, request)
        vote = do_vote(_pending(finding), **data, acting_user=request.user)
        return Response(VoteSerializer(vote).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=RecuseSerializer,
        responses={201: RecusalSerializer},
        examples=[
            OpenApiExample(
                "Conflict", value={"reason": "I co-authored the probe."}, request_only=True
            )
        ],
    )
    @action(detail=True, methods=["post"])
    def recuse(self, request: Request, pk: str) -> Response:
        """Step back from reviewing the finding (a conflict of interest). The finding's review
        is no longer shown to you, and the finding no longer at the review tier."""
        finding = self._allowed(pk, policy.can_review)
        reason = parse_body(RecuseSerializer, request)["reason"]
        recusal = do_recuse(finding, reason=reason, acting_user=request.user)
        return Response(RecusalSerializer(recusal).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=ScheduleSerializer,
        responses=ReleaseRequestSerializer,
        examples=[
            OpenApiExample(
                "Embargo until", value={"embargo_until": "2027-01-15T09:00:00Z"}, request_only=True
            )
        ],
    )
    @action(detail=True, methods=["post"])
    def schedule(self, request: Request, pk: str) -> Response:
        """Schedule the pending request above the review tier for its embargo instant
        (release managers and the project's delegated managers); the scheduler re-checks every
        gate then."""
        finding = self._allowed(pk, lambda u, f: policy.can_manage_releases(u, f.project))
        when = parse_body(ScheduleSerializer, request)["embargo_until"]
        scheduled = check_schedule_release(
            _pending(finding), embargo_until=when, acting_user=request.user
        )
        rows = ReleaseRequest.objects.select_related("requested_by").prefetch_related(
            Prefetch("votes", queryset=Vote.objects.select_related("reviewer"))
        )
        return Response(ReleaseRequestSerializer(rows.get(pk=scheduled.pk)).data)

    @extend_schema(
        request=RetractSerializer,
        responses=FindingSerializer,
        examples=[
            OpenApiExample(
                "Retract",
                value={"reason": "The effect was a data leak.", "confirm": True},
                request_only=True,
            ),
            OpenApiExample(
                "Retract and destroy the evidence",
                value={
                    "reason": "Consent withdrawn.",
                    "confirm": True,
                    "destroy_data": True,
                    "destroy_reason": "The corpus owner withdrew consent.",
                },
                request_only=True,
            ),
        ],
    )
    @action(detail=True, methods=["post"])
    def retract(self, request: Request, pk: str) -> Response:
        """Retract the finding now (its team, or release managers): it leaves every list, a
        tombstone stays at its address, and everyone who accessed it is told."""
        finding = self._allowed(pk, policy.can_retract)
        data = parse_body(RetractSerializer, request)
        do_retract_finding(
            finding,
            reason=data["reason"],
            destroy_data=data["destroy_data"],
            destroy_reason=data["destroy_reason"],
            acting_user=request.user,
        )
        finding.refresh_from_db()
        return Response(FindingSerializer(finding).data)

    @extend_schema(methods=["GET"], request=None, responses=FindingRevisionSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request=RevisionProposeSerializer,
        responses={201: FindingRevisionSerializer},
        examples=[
            OpenApiExample(
                "A corrected revision",
                value={
                    "title": "Induction heads form at step 400 (corrected)",
                    "body": "The earlier step count was off by one evaluation interval.",
                    "note": "fix the step count",
                },
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def revisions(self, request: Request, pk: str) -> Response:
        """GET: the finding's revisions you are cleared for (every approved and pending one for
        the team and the review board; for other readers, those of the finding's current
        tier). POST: the team proposes a revision of a finding above the team tier; it is
        reviewed to the finding's tier and readers keep the current text until approval."""
        if request.method == "GET":
            finding = self._finding(pk)
            rows = policy.visible_revisions(request.user, finding)
            return Response(FindingRevisionSerializer(rows, many=True).data)
        finding = self._allowed(pk, policy.can_revise_finding)
        data = parse_body(RevisionProposeSerializer, request)
        revision = check_propose_revision(finding, **data, acting_user=request.user)
        return Response(FindingRevisionSerializer(revision).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=RevisionWithdrawSerializer,
        responses=RevisionWithdrawResultSerializer,
        examples=[OpenApiExample("Withdraw", value={"reason": "wrong figure"}, request_only=True)],
    )
    @action(detail=True, methods=["post"], url_path="revisions/withdraw")
    def withdraw_revision(self, request: Request, pk: str) -> Response:
        """The team withdraws the finding's pending revision (its review request is cancelled
        with it). ``withdrawn`` is false when none was pending."""
        finding = self._allowed(pk, policy.can_revise_finding)
        reason = parse_body(RevisionWithdrawSerializer, request)["reason"]
        revision = pending_revision(finding)
        if revision is None:
            body: dict[str, Any] = {
                "withdrawn": False,
                "number": None,
                "detail": "No revision is pending.",
            }
            return Response(RevisionWithdrawResultSerializer(body).data)
        done = do_withdraw_pending_revision(revision, reason=reason, acting_user=request.user)
        body = {
            "withdrawn": done,
            "number": revision.number,
            "detail": f"Revision {revision.number} withdrawn." if done else "Already decided.",
        }
        return Response(RevisionWithdrawResultSerializer(body).data)


class ObjectionViewSet(ApiViewMixin, viewsets.GenericViewSet[Vote]):
    """Objections (blocking votes, raised with ``POST /findings/{id}/votes/`` and ``kind``
    ``object``): read by whoever sees the finding's review; withdrawn by their author; cleared
    by a quorum of other board members who may review the finding (no one overrides one
    alone)."""

    queryset = Vote.objects.none()
    serializer_class = ObjectionSerializer
    lookup_value_regex = r"\d+"
    scopes = {"withdraw": TokenScope.MANAGE, "clear": TokenScope.MANAGE}

    def _objection(self, pk: Any) -> tuple[Vote, Finding]:
        """The objection and its finding, for a user who can see the finding (else 404)."""
        vote = (
            Vote.objects.filter(pk=parse_id(pk), kind=VoteKind.OBJECT)
            .select_related("finding__project", "request", "reviewer", "resolved_by")
            .first()
        )
        if vote is None:
            raise deny()
        return vote, policy.get_finding_or_404(self.request.user, vote.finding_id)

    def _reload(self, vote: Vote) -> Vote:
        rows: QuerySet[Vote] = Vote.objects.select_related("reviewer", "resolved_by")
        return rows.prefetch_related(
            Prefetch("clearances", queryset=ObjectionClearance.objects.select_related("reviewer"))
        ).get(pk=vote.pk)

    def retrieve(self, request: Request, pk: str) -> Response:
        vote, finding = self._objection(pk)
        if not policy.can_see_review(request.user, finding):
            raise deny()
        return Response(ObjectionSerializer(self._reload(vote)).data)

    @extend_schema(
        request=WithdrawObjectionSerializer,
        responses=ObjectionSerializer,
        examples=[
            OpenApiExample("Withdraw", value={"reason": "The team fixed it."}, request_only=True)
        ],
    )
    @action(detail=True, methods=["post"])
    def withdraw(self, request: Request, pk: str) -> Response:
        """Withdraw your own open objection."""
        vote, _ = self._objection(pk)
        if not policy.can_withdraw_objection(request.user, vote):
            raise deny()
        reason = parse_body(WithdrawObjectionSerializer, request)["reason"]
        do_withdraw_objection(vote, reason=reason, acting_user=request.user)
        return Response(ObjectionSerializer(self._reload(vote)).data)

    @extend_schema(
        request=ClearObjectionSerializer,
        responses=ClearResultSerializer,
        examples=[
            OpenApiExample(
                "Vote to clear",
                value={"rationale": "The concern is addressed in revision 2."},
                request_only=True,
            )
        ],
    )
    @action(detail=True, methods=["post"])
    def clear(self, request: Request, pk: str) -> Response:
        """Vote to clear someone else's open objection (board members who may review the
        finding, once each); it is cleared when the quorum is reached."""
        vote, finding = self._objection(pk)
        if not policy.can_clear_objection(request.user, vote, finding):
            raise deny()
        rationale = parse_body(ClearObjectionSerializer, request)["rationale"]
        cleared = do_clear_objection(vote, rationale=rationale, acting_user=request.user)
        return Response(
            ClearResultSerializer({"cleared": cleared, "objection": self._reload(vote)}).data
        )

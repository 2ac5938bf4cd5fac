"""The review flow's request bodies and answers: votes, objections, recusal, scheduling,
retraction, revisions and grant approval. Each body carries what the matching web form does
(disclosure/forms.py) with the same limits."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rest_framework import serializers

from api.serializers.common import restrict, user_field
from disclosure import policy
from disclosure.models import ObjectionClearance, Recusal, Vote, VoteKind
from experiments.inputs import (
    FUTURE_LIMIT_MESSAGE,
    MAX_BODY_CHARS,
    MAX_RATIONALE_CHARS,
    MAX_TITLE_CHARS,
    too_far_ahead,
)
from experiments.models import Artifact, Finding, Run


class VoteCreateSerializer(serializers.Serializer[Any]):
    """Approve or object to the finding's pending request. An objection (``kind: object``)
    needs a rationale and blocks the step until its author withdraws it or a quorum of other
    board members clears it."""

    kind = serializers.ChoiceField(choices=VoteKind.choices)
    rationale = serializers.CharField(
        max_length=MAX_RATIONALE_CHARS, required=False, allow_blank=True, default=""
    )


class ClearanceSerializer(serializers.ModelSerializer[ObjectionClearance]):
    reviewer = user_field("reviewer")

    class Meta:
        model = ObjectionClearance
        fields = ["reviewer", "rationale", "created_at"]


class ObjectionSerializer(serializers.ModelSerializer[Vote]):
    """An objection (a blocking vote) with the votes to clear it so far and the quorum that
    clears it."""

    reviewer = user_field("reviewer")
    resolved_by = user_field("resolved_by")
    open = serializers.BooleanField(source="is_open_objection", read_only=True)
    clearances = ClearanceSerializer(many=True, read_only=True)
    quorum = serializers.SerializerMethodField(
        help_text="how many board members other than its author must vote to clear it"
    )

    class Meta:
        model = Vote
        fields = [
            "id",
            "finding",
            "request",
            "reviewer",
            "kind",
            "rationale",
            "created_at",
            "open",
            "resolved_at",
            "resolved_by",
            "resolution",
            "clearances",
            "quorum",
        ]
        read_only_fields = fields

    def get_quorum(self, vote: Vote) -> int:
        from disclosure.actions.review import objection_quorum

        return objection_quorum(vote)


class WithdrawObjectionSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


class ClearObjectionSerializer(serializers.Serializer[Any]):
    rationale = serializers.CharField(max_length=MAX_RATIONALE_CHARS)


class ClearResultSerializer(serializers.Serializer[Any]):
    cleared = serializers.BooleanField(help_text="whether the quorum is reached and it is cleared")
    objection = ObjectionSerializer()


class RecuseSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=300)


class RecusalSerializer(serializers.ModelSerializer[Recusal]):
    reviewer = user_field("reviewer")

    class Meta:
        model = Recusal
        fields = ["id", "finding", "reviewer", "reason", "created_at"]
        read_only_fields = fields


class ScheduleSerializer(serializers.Serializer[Any]):
    """The embargo instant of the pending request (ISO 8601 with a time zone; UTC when none).
    The scheduler promotes it then, if every gate still passes."""

    embargo_until = serializers.DateTimeField()

    def validate_embargo_until(self, value: datetime) -> datetime:
        if too_far_ahead(value):
            raise serializers.ValidationError(FUTURE_LIMIT_MESSAGE)
        return value


class RetractSerializer(serializers.Serializer[Any]):
    """Retract now. ``confirm`` must be true (it cannot be undone); ``destroy_data`` also
    crypto-shreds the evidence files and then needs ``destroy_reason``."""

    reason = serializers.CharField(max_length=300)
    confirm = serializers.BooleanField()
    destroy_data = serializers.BooleanField(required=False, default=False)
    destroy_reason = serializers.CharField(
        max_length=300, required=False, allow_blank=True, default=""
    )

    def validate_confirm(self, value: bool) -> bool:
        if not value:
            raise serializers.ValidationError("Confirm that the retraction cannot be undone.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs.get("destroy_data") and not attrs.get("destroy_reason", "").strip():
            raise serializers.ValidationError(
                {"destroy_reason": "Say why the evidence must be destroyed."}
            )
        return attrs


class RevisionProposeSerializer(serializers.Serializer[Any]):
    """A revision of a finding above the team tier, reviewed to the finding's tier. Evidence
    left out keeps what the finding cites now."""

    title = serializers.CharField(max_length=MAX_TITLE_CHARS)
    body = serializers.CharField(max_length=MAX_BODY_CHARS, allow_blank=True)
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    runs = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Run.objects.none(), required=False
    )
    artifacts = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Artifact.objects.none(), required=False
    )
    dependencies = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Finding.objects.none(), required=False
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            # SECURITY: invisible and missing ids give the same "does not exist" error.
            restrict(self.fields["runs"], policy.visible_runs(request.user))
            restrict(self.fields["artifacts"], policy.visible_artifacts(request.user))
            restrict(self.fields["dependencies"], policy.visible_findings(request.user))


class RevisionWithdrawSerializer(serializers.Serializer[Any]):
    reason = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


class RevisionWithdrawResultSerializer(serializers.Serializer[Any]):
    withdrawn = serializers.BooleanField()
    number = serializers.IntegerField(allow_null=True)
    detail = serializers.CharField()


class GrantApprovalSerializer(serializers.Serializer[Any]):
    decision = serializers.ChoiceField(choices=[("approve", "approve"), ("decline", "decline")])
    note = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")

"""Findings, their evidence and their review (assessments, release requests, votes)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.validators import URLValidator
from rest_framework import serializers

from api.serializers.common import (
    FiniteFloatField,
    restrict,
    user_field,
)
from disclosure import policy
from disclosure.models import (
    AlignmentValue,
    Assessment,
    CapabilityUplift,
    ReleaseRequest,
    Vote,
)
from experiments.inputs import MAX_BODY_CHARS, MAX_RATIONALE_CHARS, MAX_TITLE_CHARS
from experiments.models import (
    Artifact,
    Finding,
    FindingRevision,
    FindingStatus,
    MetricSnapshot,
    Project,
    Reveals,
    Run,
    Tier,
)

User = get_user_model()


class SnapshotSerializer(serializers.ModelSerializer[MetricSnapshot]):
    value = FiniteFloatField()

    class Meta:
        model = MetricSnapshot
        fields = ["run", "name", "step", "value"]


class FindingSerializer(serializers.ModelSerializer[Finding]):
    project: serializers.SlugRelatedField[Project] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    tier_label = serializers.CharField(source="get_tier_display", read_only=True)
    created_by = user_field("created_by")
    runs: serializers.PrimaryKeyRelatedField[Run] = serializers.PrimaryKeyRelatedField(
        many=True, read_only=True
    )
    artifacts: serializers.PrimaryKeyRelatedField[Artifact] = serializers.PrimaryKeyRelatedField(
        many=True, read_only=True
    )
    snapshots = SnapshotSerializer(many=True, read_only=True)

    class Meta:
        model = Finding
        fields = [
            "id",
            "public_id",
            "project",
            "title",
            "body",
            "tier",
            "tier_label",
            "status",
            "reveals",
            "created_by",
            "created_at",
            "updated_at",
            "retracted_at",
            "retraction_reason",
            "runs",
            "artifacts",
            "snapshots",
        ]
        read_only_fields = fields


class FindingFilterSerializer(serializers.Serializer[Any]):
    project = serializers.SlugField(required=False)
    tier = serializers.ChoiceField(choices=Tier.choices, required=False)
    status = serializers.ChoiceField(choices=FindingStatus.choices, required=False)
    q = serializers.CharField(required=False, max_length=100, help_text="words in the title")


class FindingCreateSerializer(serializers.Serializer[Any]):
    """Record a finding from runs of one project you are a member of, citing artifacts of
    those runs and freezing the latest value of named metric series of each cited run."""

    title = serializers.CharField(max_length=MAX_TITLE_CHARS)
    body = serializers.CharField(max_length=MAX_BODY_CHARS, help_text="Markdown")
    runs = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Run.objects.none(), allow_empty=False
    )
    artifacts = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Artifact.objects.none(), required=False
    )
    metrics = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=50
    )
    reveals = serializers.ChoiceField(
        choices=Reveals.choices, required=False, help_text="what the finding reveals"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            user = request.user
            # SECURITY: invisible and missing ids give the same "does not exist" error.
            restrict(self.fields["runs"], policy.visible_runs(user))
            restrict(self.fields["artifacts"], policy.visible_artifacts(user))


class FindingEditSerializer(serializers.Serializer[Any]):
    """An edit. At the team tier it applies at once; above it, it becomes a pending revision
    reviewed to the finding's tier (answered 202 with the revision), and readers keep the
    current text until it is approved."""

    title = serializers.CharField(max_length=MAX_TITLE_CHARS, required=False)
    body = serializers.CharField(max_length=MAX_BODY_CHARS, required=False)
    note = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")


class FindingRevisionSerializer(serializers.ModelSerializer[FindingRevision]):
    """One version of a finding's content. ``state`` pending: under review; readers still see
    the last approved revision."""

    created_by = user_field("created_by")
    tier = serializers.SerializerMethodField()

    class Meta:
        model = FindingRevision
        fields = [
            "number",
            "state",
            "tier",
            "title",
            "body",
            "run_ids",
            "artifact_ids",
            "dependency_ids",
            "note",
            "created_by",
            "created_at",
            "decided_at",
        ]
        read_only_fields = fields

    def get_tier(self, revision: FindingRevision) -> str:
        return str(Tier(revision.tier).label)


class RationaleSerializer(serializers.Serializer[Any]):
    rationale = serializers.CharField(
        max_length=MAX_RATIONALE_CHARS, required=False, allow_blank=True, default=""
    )


class VoteSerializer(serializers.ModelSerializer[Vote]):
    reviewer = user_field("reviewer")

    class Meta:
        model = Vote
        fields = ["id", "reviewer", "kind", "rationale", "created_at", "resolved_at", "resolution"]


class ReleaseRequestSerializer(serializers.ModelSerializer[ReleaseRequest]):
    requested_by = user_field("requested_by")
    votes = VoteSerializer(many=True, read_only=True)
    gate = serializers.SerializerMethodField(
        help_text="why a pending request cannot be promoted now (empty: every gate passes)"
    )

    class Meta:
        model = ReleaseRequest
        fields = [
            "id",
            "finding",
            "from_tier",
            "target_tier",
            "state",
            "requested_by",
            "requested_at",
            "rationale",
            "embargo_until",
            "hold_reason",
            "votes",
            "gate",
        ]

    def get_gate(self, request: ReleaseRequest) -> list[str]:
        from disclosure.gates import gate_reasons

        pending = request.state in ("open", "scheduled")
        return gate_reasons(request) if pending else []


class AssessmentSerializer(serializers.ModelSerializer[Assessment]):
    reviewer = user_field("reviewer")

    class Meta:
        model = Assessment
        fields = [
            "id",
            "finding",
            "reviewer",
            "capability_uplift",
            "alignment_value",
            "categories",
            "rationale",
            "evidence_links",
            "created_at",
            "updated_at",
        ]


class AssessmentCreateSerializer(serializers.Serializer[Any]):
    capability_uplift = serializers.ChoiceField(choices=CapabilityUplift.choices)
    alignment_value = serializers.ChoiceField(choices=AlignmentValue.choices)
    rationale = serializers.CharField(max_length=MAX_RATIONALE_CHARS)
    categories = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=20
    )
    # SECURITY: http(s) only, so a link rendered in a page cannot be javascript:.
    evidence_links = serializers.ListField(
        child=serializers.URLField(validators=[URLValidator(schemes=["http", "https"])]),
        required=False,
        max_length=20,
    )

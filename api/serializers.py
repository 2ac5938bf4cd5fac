"""Request and response shapes of the API. Serializers only parse and present: querysets that
limit what a field may refer to come from :mod:`disclosure.policy` (set per request), and
every change is made by an action called from the view."""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.validators import URLValidator
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from disclosure import policy
from disclosure.models import (
    AlignmentValue,
    Assessment,
    CapabilityUplift,
    Export,
    Grant,
    ReleaseRequest,
    Vote,
)
from experiments.models import (
    Artifact,
    Experiment,
    Finding,
    FindingStatus,
    MetricSnapshot,
    Project,
    Queue,
    Run,
    RunStatus,
    Tier,
)

User = get_user_model()
MAX_ID = 2**63 - 1  # bigint ids: anything larger is "not found", never a database error
MAX_STEP = 2**31 - 1


def finite_json(value: Any) -> Any:
    """``value`` with NaN/±inf replaced by None: strict JSON cannot carry them, and a diverged
    run's loss is NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


class FiniteFloatField(serializers.FloatField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> float | None:
        return finite_json(float(value))


@extend_schema_field(OpenApiTypes.OBJECT)
class FiniteJSONField(serializers.JSONField):
    def to_representation(self, value: Any) -> Any:
        return finite_json(value)


def _user(field: str) -> serializers.CharField:
    """A user reference shown as the username (null when the account is gone)."""
    return serializers.CharField(source=f"{field}.username", read_only=True, allow_null=True)


# --- projects, experiments ---------------------------------------------------------------------


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["slug", "name", "description", "created_at"]


class ExperimentSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    created_by = _user("created_by")
    n_runs = serializers.IntegerField(read_only=True)

    class Meta:
        model = Experiment
        fields = ["id", "project", "name", "description", "created_by", "created_at", "n_runs"]


# --- runs --------------------------------------------------------------------------------------


class ArtifactSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Artifact
        fields = [
            "id",
            "run",
            "project",
            "name",
            "kind",
            "content_type",
            "size",
            "sha256",
            "created_at",
            "download_url",
        ]

    def get_download_url(self, artifact: Artifact) -> str:
        return reverse("api-artifact-download", args=[artifact.pk])


class RunSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    experiment = serializers.CharField(source="experiment.name", read_only=True)
    created_by = _user("created_by")
    fraction = serializers.SerializerMethodField()
    config = FiniteJSONField(read_only=True)
    loss = FiniteFloatField()
    accuracy = FiniteFloatField()
    test_accuracy = FiniteFloatField()
    tokens_per_s = FiniteFloatField()
    eta_s = FiniteFloatField()
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = Run
        fields = [
            "id",
            "project",
            "experiment",
            "experiment_id",
            "name",
            "status",
            "active",
            "preset",
            "task",
            "queue",
            "config",
            "rerun_of",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "heartbeat_at",
            "attempt",
            "step",
            "total_steps",
            "fraction",
            "loss",
            "accuracy",
            "test_accuracy",
            "tokens_per_s",
            "eta_s",
            "device",
            "worker_host",
            "error",
        ]
        read_only_fields = fields

    def get_fraction(self, run: Run) -> float:
        return round(run.progress_fraction, 4)


class RunDetailSerializer(RunSerializer):
    result = FiniteJSONField(read_only=True)
    artifacts = ArtifactSerializer(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "result", "artifacts"]
        read_only_fields = fields


def _no_nul_or_nonfinite(value: Any, path: str = "") -> None:
    """SECURITY/robustness: NUL characters and non-finite numbers cannot be stored in a
    PostgreSQL JSON column; refuse them as field errors instead of failing in the database."""
    if isinstance(value, str) and "\x00" in value:
        raise serializers.ValidationError({path: "NUL characters are not allowed."})
    if isinstance(value, float) and not math.isfinite(value):
        raise serializers.ValidationError({path: "numbers must be finite."})
    if isinstance(value, dict):
        for k, v in value.items():
            _no_nul_or_nonfinite(str(k), path)
            _no_nul_or_nonfinite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_nul_or_nonfinite(v, f"{path}.{i}" if path else str(i))


class ConfigField(serializers.JSONField):
    """A run config: a JSON object in the shape of ``h3lab.config.RunConfig.to_dict()``
    (sections ``preset``, ``model``, ``task``, ``train``). Validated by RunConfig itself."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be a JSON object")
        _no_nul_or_nonfinite(value, "")
        return value


class RunSubmitSerializer(serializers.Serializer):
    project = serializers.SlugField(help_text="slug of a project you are a member of")
    experiment = serializers.CharField(max_length=200, default="default")
    name = serializers.CharField(max_length=200, default="", allow_blank=True)
    queue = serializers.ChoiceField(choices=Queue.choices, default=Queue.CPU)
    config = ConfigField(
        help_text="RunConfig as JSON: {preset, model, task, train}; omitted keys take defaults"
    )
    n_layer = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=64,
        help_text="depth, used when config has no model section (the model is then built from "
        "config.preset, as the web form does)",
    )
    d_model = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=16384,
        help_text="width, used when config has no model section",
    )


class RerunSerializer(serializers.Serializer):
    experiment = serializers.CharField(max_length=200, required=False)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    queue = serializers.ChoiceField(choices=Queue.choices, required=False)
    config = ConfigField(
        required=False, help_text="overrides, merged key by key into the source run's config"
    )


class CancelResultSerializer(serializers.Serializer):
    cancelled = serializers.BooleanField()
    detail = serializers.CharField()
    run = RunSerializer()


class RunFilterSerializer(serializers.Serializer):
    project = serializers.SlugField(required=False)
    experiment = serializers.CharField(required=False, max_length=200)
    status = serializers.ChoiceField(choices=RunStatus.choices, required=False)
    preset = serializers.CharField(required=False, max_length=32)
    task = serializers.CharField(required=False, max_length=32)
    queue = serializers.ChoiceField(choices=Queue.choices, required=False)


class MetricsQuerySerializer(serializers.Serializer):
    name = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, help_text="series names"
    )
    after_step = serializers.IntegerField(
        required=False, min_value=0, max_value=MAX_STEP, help_text="only points after this step"
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=10_000, default=5000)


class MetricPointSerializer(serializers.Serializer):
    name = serializers.CharField()
    step = serializers.IntegerField()
    value = FiniteFloatField()


class MetricsSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    status = serializers.CharField()
    names = serializers.ListField(child=serializers.CharField())
    points = MetricPointSerializer(many=True)
    next_after_step = serializers.IntegerField(
        allow_null=True, help_text="pass as after_step for the next page; null at the end"
    )


class LogsQuerySerializer(serializers.Serializer):
    tail = serializers.IntegerField(required=False, min_value=1, max_value=5000, default=200)


class LogsSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    status = serializers.CharField()
    source = serializers.CharField(allow_null=True, help_text="the log artifact's name")
    lines = serializers.ListField(child=serializers.CharField())
    error = serializers.CharField()
    traceback = serializers.CharField()


class ArtifactFilterSerializer(serializers.Serializer):
    run = serializers.IntegerField(required=False, min_value=1, max_value=MAX_ID)
    project = serializers.SlugField(required=False)
    kind = serializers.CharField(required=False, max_length=16)


# --- findings ----------------------------------------------------------------------------------


class SnapshotSerializer(serializers.ModelSerializer):
    value = FiniteFloatField()

    class Meta:
        model = MetricSnapshot
        fields = ["run", "name", "step", "value"]


class FindingSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    tier_label = serializers.CharField(source="get_tier_display", read_only=True)
    created_by = _user("created_by")
    runs = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    artifacts = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
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


class FindingFilterSerializer(serializers.Serializer):
    project = serializers.SlugField(required=False)
    tier = serializers.ChoiceField(choices=Tier.choices, required=False)
    status = serializers.ChoiceField(choices=FindingStatus.choices, required=False)
    q = serializers.CharField(required=False, max_length=100, help_text="words in the title")


class FindingCreateSerializer(serializers.Serializer):
    """Record a finding from runs of one project you are a member of, citing artifacts of
    that project and freezing the latest value of named metric series of each cited run."""

    title = serializers.CharField(max_length=300)
    body = serializers.CharField(help_text="Markdown")
    runs = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Run.objects.none(), allow_empty=False
    )
    artifacts = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Artifact.objects.none(), required=False
    )
    metrics = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=50
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            user = request.user
            # SECURITY: invisible and missing ids give the same "does not exist" error.
            self.fields["runs"].child_relation.queryset = policy.visible_runs(user)
            self.fields["artifacts"].child_relation.queryset = policy.visible_artifacts(user)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        projects = {run.project_id for run in data["runs"]}
        if len(projects) != 1:
            raise serializers.ValidationError({"runs": "cite runs of one project"})
        project_id = projects.pop()
        if any(a.project_id != project_id for a in data.get("artifacts", [])):
            raise serializers.ValidationError({"artifacts": "cite artifacts of the runs' project"})
        return data


class FindingEditSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=300, required=False)
    body = serializers.CharField(required=False)


class RationaleSerializer(serializers.Serializer):
    rationale = serializers.CharField(required=False, allow_blank=True, default="")


class VoteSerializer(serializers.ModelSerializer):
    reviewer = _user("reviewer")

    class Meta:
        model = Vote
        fields = ["id", "reviewer", "kind", "rationale", "created_at", "resolved_at", "resolution"]


class ReleaseRequestSerializer(serializers.ModelSerializer):
    requested_by = _user("requested_by")
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


class AssessmentSerializer(serializers.ModelSerializer):
    reviewer = _user("reviewer")

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


class AssessmentCreateSerializer(serializers.Serializer):
    capability_uplift = serializers.ChoiceField(choices=CapabilityUplift.choices)
    alignment_value = serializers.ChoiceField(choices=AlignmentValue.choices)
    rationale = serializers.CharField()
    categories = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, max_length=20
    )
    # SECURITY: http(s) only, so a link rendered in a page cannot be javascript:.
    evidence_links = serializers.ListField(
        child=serializers.URLField(validators=[URLValidator(schemes=["http", "https"])]),
        required=False,
        max_length=20,
    )


# --- grants ------------------------------------------------------------------------------------


class GrantSerializer(serializers.ModelSerializer):
    user = _user("user")
    group = serializers.CharField(source="group.name", read_only=True, allow_null=True)
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    agreement_version = serializers.IntegerField(source="agreement.version", read_only=True)
    granted_by = _user("granted_by")
    active = serializers.SerializerMethodField()

    class Meta:
        model = Grant
        fields = [
            "id",
            "user",
            "group",
            "project",
            "finding",
            "max_tier",
            "agreement_version",
            "note",
            "granted_by",
            "created_at",
            "expires_at",
            "revoked_at",
            "revoke_reason",
            "active",
        ]

    def get_active(self, grant: Grant) -> bool:
        return grant.is_active()


class GrantCreateSerializer(serializers.Serializer):
    """Grant exactly one user or group access to exactly one project or finding."""

    user = serializers.SlugRelatedField(
        slug_field="username",
        queryset=User.objects.filter(is_active=True),
        required=False,
        allow_null=True,
    )
    group = serializers.SlugRelatedField(
        slug_field="name", queryset=Group.objects.all(), required=False, allow_null=True
    )
    project = serializers.SlugRelatedField(
        slug_field="slug", queryset=Project.objects.none(), required=False, allow_null=True
    )
    finding = serializers.PrimaryKeyRelatedField(
        queryset=Finding.objects.none(), required=False, allow_null=True
    )
    max_tier = serializers.ChoiceField(
        choices=[(Tier.REVIEW, "review"), (Tier.PARTNERS, "partners")], default=Tier.PARTNERS
    )
    expires_at = serializers.DateTimeField()
    note = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            # SECURITY: only projects the user manages, and findings they can see in them.
            projects = policy.manageable_projects(request.user)
            findings = policy.visible_findings(request.user).filter(
                project__in=projects.values("pk")
            )
            self.fields["project"].queryset = projects
            self.fields["finding"].queryset = findings


class RevokeSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")


# --- who am I ----------------------------------------------------------------------------------


class MeSerializer(serializers.Serializer):
    username = serializers.CharField()
    auth = serializers.ChoiceField(choices=["token", "session"])
    scope = serializers.CharField(help_text="the token's scope; 'manage' for a session")
    token_expires_at = serializers.DateTimeField(allow_null=True)
    projects = serializers.ListField(child=serializers.SlugField())
    reviewer = serializers.BooleanField()
    release_manager = serializers.BooleanField()


# --- exports -----------------------------------------------------------------------------------


class ExportSerializer(serializers.ModelSerializer):
    progress = FiniteFloatField()
    blockers = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()), read_only=True
    )
    created_by = _user("created_by")
    recipient = _user("recipient")
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    findings = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = Export
        fields = [
            "id",
            "kind",
            "status",
            "progress",
            "message",
            "blockers",
            "created_by",
            "recipient",
            "project",
            "findings",
            "name",
            "size",
            "sha256",
            "signing_key_id",
            "encrypted",
            "created_at",
            "started_at",
            "finished_at",
            "download_url",
        ]
        read_only_fields = fields

    def get_download_url(self, export: Any) -> str:
        return reverse("api-export-download", args=[export.pk])


class ExportRequestSerializer(serializers.Serializer):
    """A publication bundle of public findings, or a recipient-marked partner copy. With no
    ``findings``: a project's public findings (public), or everything granted to the recipient
    in projects you manage (partner)."""

    kind = serializers.ChoiceField(choices=["public", "partner"])
    findings = serializers.PrimaryKeyRelatedField(
        many=True, queryset=Finding.objects.none(), required=False
    )
    project = serializers.SlugRelatedField(
        slug_field="slug", queryset=Project.objects.none(), required=False, allow_null=True
    )
    recipient = serializers.SlugRelatedField(
        slug_field="username",
        queryset=User.objects.filter(is_active=True),
        required=False,
        allow_null=True,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        request = self.context.get("request")
        if request is not None:
            # SECURITY: the same choices as the export forms (disclosure.forms.ExportForm).
            self.fields["findings"].child_relation.queryset = policy.exportable_findings(
                request.user
            )
            self.fields["project"].queryset = policy.manageable_projects(request.user)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if data["kind"] == "public" and not data.get("findings") and not data.get("project"):
            raise serializers.ValidationError("Choose findings or a whole project.")
        if data["kind"] == "partner" and not data.get("recipient"):
            raise serializers.ValidationError({"recipient": "a partner copy needs a recipient"})
        return data

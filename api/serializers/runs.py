"""Training runs: submission, progress, metrics and logs."""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth import get_user_model
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from api.serializers.artifacts import ArtifactSerializer
from api.serializers.common import (
    MAX_STEP,
    FiniteFloatField,
    FiniteJSONField,
    user_field,
)
from experiments.models import (
    Project,
    Queue,
    Run,
    RunKind,
    RunStatus,
)
from experiments.runconfig import MAX_D_MODEL, MAX_LAYERS, run_estimate

User = get_user_model()


class EstimateSerializer(serializers.Serializer[Any]):
    """What the run is estimated to cost (:mod:`h3lab.estimate`): exact parameters, the
    conservative peak training memory in bytes, and FLOPs over all its steps."""

    parameters = serializers.IntegerField()
    memory_bytes = serializers.IntegerField()
    flops = serializers.IntegerField()


class RunSerializer(serializers.ModelSerializer[Run]):
    project: serializers.SlugRelatedField[Project] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    experiment = serializers.CharField(source="experiment.name", read_only=True)
    created_by = user_field("created_by")
    fraction = serializers.SerializerMethodField()
    config = FiniteJSONField(read_only=True)
    loss = FiniteFloatField()
    accuracy = FiniteFloatField()
    test_accuracy = FiniteFloatField()
    tokens_per_s = FiniteFloatField()
    eta_s = FiniteFloatField()
    active = serializers.BooleanField(source="is_active", read_only=True)
    queue_unreachable = serializers.BooleanField(
        read_only=True,
        help_text=(
            "Queued, but the job queue was unreachable when it was sent; the run starts "
            "when the queue returns (it is sent again automatically)."
        ),
    )
    estimate = serializers.SerializerMethodField()

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
            "queue_unreachable",
            "preset",
            "task",
            "queue",
            "config",
            "rerun_of",
            "kind",
            "source",
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
            "estimate",
        ]
        read_only_fields = fields

    def get_fraction(self, run: Run) -> float:
        return round(run.progress_fraction, 4)

    @extend_schema_field(EstimateSerializer(allow_null=True))
    def get_estimate(self, run: Run) -> dict[str, int] | None:
        est = run_estimate(run.config)
        if est is None:
            return None
        return {"parameters": est.parameters, "memory_bytes": est.memory_bytes, "flops": est.flops}


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


class RunSubmitSerializer(serializers.Serializer[Any]):
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
        max_value=MAX_LAYERS,
        help_text="depth, used when config has no model section (the model is then built from "
        "config.preset, as the web form does)",
    )
    d_model = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_D_MODEL,
        help_text="width, used when config has no model section",
    )


class RerunSerializer(serializers.Serializer[Any]):
    experiment = serializers.CharField(max_length=200, required=False)
    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    queue = serializers.ChoiceField(choices=Queue.choices, required=False)
    config = ConfigField(
        required=False, help_text="overrides, merged key by key into the source run's config"
    )


class AnalysisSubmitSerializer(serializers.Serializer[Any]):
    """An analysis of a finished training run's checkpoint; the options a kind does not use
    are ignored (see h3lab.analysis.AnalysisSpec)."""

    kind = serializers.ChoiceField(choices=[k for k in RunKind.values if k != RunKind.TRAIN])
    name = serializers.CharField(max_length=200, default="", allow_blank=True)
    queue = serializers.ChoiceField(choices=Queue.choices, required=False)
    probe = serializers.CharField(max_length=32, required=False, help_text="probe: which one")
    examples = serializers.IntegerField(
        required=False, help_text="ablation/patching/steering/mechanism: test examples used"
    )
    corruption = serializers.ChoiceField(
        choices=["values", "keys"],
        required=False,
        help_text="patching: corrupt the values (default) or the keys",
    )
    seed = serializers.IntegerField(required=False)
    modes = serializers.ListField(
        child=serializers.CharField(max_length=16), required=False, help_text="ablation modes"
    )
    hook = serializers.CharField(
        max_length=100, required=False, allow_blank=True, help_text="steering: hook name"
    )
    coefficients = serializers.ListField(
        child=serializers.FloatField(), required=False, help_text="steering coefficients"
    )


class CancelResultSerializer(serializers.Serializer[Any]):
    cancelled = serializers.BooleanField()
    detail = serializers.CharField()
    run = RunSerializer()


class RunFilterSerializer(serializers.Serializer[Any]):
    project = serializers.SlugField(required=False)
    experiment = serializers.CharField(required=False, max_length=200)
    status = serializers.ChoiceField(choices=RunStatus.choices, required=False)
    preset = serializers.CharField(required=False, max_length=32)
    task = serializers.CharField(required=False, max_length=32)
    queue = serializers.ChoiceField(choices=Queue.choices, required=False)


class MetricsQuerySerializer(serializers.Serializer[Any]):
    name = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, help_text="series names"
    )
    after_step = serializers.IntegerField(
        required=False, min_value=0, max_value=MAX_STEP, help_text="only points after this step"
    )
    limit = serializers.IntegerField(required=False, min_value=1, max_value=10_000, default=5000)


class MetricPointSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    step = serializers.IntegerField()
    value = FiniteFloatField()


class MetricsSerializer(serializers.Serializer[Any]):
    run = serializers.IntegerField()
    status = serializers.CharField()
    names = serializers.ListField(child=serializers.CharField())
    points = MetricPointSerializer(many=True)
    next_after_step = serializers.IntegerField(
        allow_null=True, help_text="pass as after_step for the next page; null at the end"
    )


class LogsQuerySerializer(serializers.Serializer[Any]):
    tail = serializers.IntegerField(required=False, min_value=1, max_value=5000, default=200)


class LogsSerializer(serializers.Serializer[Any]):
    run = serializers.IntegerField()
    status = serializers.CharField()
    # The metaclass moves declared fields into _declared_fields, so this does not shadow
    # Field.source at runtime; the stubs cannot express that.
    source = serializers.CharField(  # type: ignore[assignment]
        allow_null=True, help_text="the log artifact's name"
    )
    lines = serializers.ListField(child=serializers.CharField())
    error = serializers.CharField()
    traceback = serializers.CharField()

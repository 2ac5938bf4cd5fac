"""Experiments: projects, runs and what they produce, and the findings recorded from them.

Governed state changes go through :mod:`experiments.actions`; visibility is decided only by
:mod:`disclosure.policy`.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.urls import reverse
from django.utils import timezone


class Tier(models.IntegerChoices):
    """Disclosure tiers, ordered: a finding is visible at its tier and to everyone cleared above.

    Defined once here; :mod:`disclosure.policy` decides who is cleared for which tier.
    """

    TEAM = 0, "team"
    REVIEW = 1, "review"
    PARTNERS = 2, "partners"
    PUBLIC = 3, "public"


class Project(models.Model):
    """A research project. Its members are the users of ``group`` (the team tier)."""

    slug = models.SlugField(unique=True, max_length=64)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="project")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("project", args=[self.slug])


class Experiment(models.Model):
    """A named group of runs inside a project (a question being asked)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="experiment_unique_name")
        ]

    def __str__(self) -> str:
        return self.name


class RunStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELLED = "cancelled", "cancelled"


ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
FINAL_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class Queue(models.TextChoices):
    CPU = "cpu", "CPU"
    GPU = "gpu", "GPU"


class RunKind(models.TextChoices):
    """What a run does: train a model, or analyse a finished training run's checkpoint."""

    TRAIN = "train", "training"
    EVALUATE = "evaluate", "evaluation"
    PROBE = "probe", "probe"
    ABLATION = "ablation", "ablation"
    PATCHING = "patching", "activation patching"
    STEERING = "steering", "steering"
    MECHANISM = "mechanism", "mechanism tests"


ANALYSIS_KINDS: tuple[str, ...] = tuple(k.value for k in RunKind if k != RunKind.TRAIN)


class Reveals(models.TextChoices):
    """What a finding reveals, for the reviewers weighing its dual-use risk."""

    UNSPECIFIED = "", "not said"
    MECHANISM = "mechanism", "a mechanism (how the model computes something)"
    INTERVENTION = "intervention", "an intervention (a way to change the model's behaviour)"
    CAPABILITY = "capability", "a capability (what the model can do)"
    EVALUATION = "evaluation", "an evaluation result"


class RunQuerySet(models.QuerySet["Run"]):
    def active(self) -> RunQuerySet:
        return self.filter(status__in=ACTIVE_STATUSES)

    def stale(self, older_than: Any) -> RunQuerySet:
        """Running runs whose last heartbeat is older than ``older_than`` (a datetime)."""
        return self.filter(status=RunStatus.RUNNING, heartbeat_at__lt=older_than)


class Run(models.Model):
    """One training job. The row is the source of truth for its state: workers move it with
    conditional updates (see :mod:`experiments.actions`), so a duplicate delivery does nothing.
    """

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    # Denormalised from experiment so the policy filters runs with one join fewer.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    name = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    config = models.JSONField(help_text="h3lab.config.RunConfig.to_dict()")
    preset = models.CharField(max_length=32, db_index=True)
    task = models.CharField(max_length=32, db_index=True)
    queue = models.CharField(max_length=8, choices=Queue.choices, default=Queue.CPU)
    rerun_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="reruns"
    )
    # An analysis (evaluation, probe, intervention) is a run too, of the finished training run
    # ``source`` whose checkpoint it reads; its spec is ``config["analysis"]``.
    kind = models.CharField(
        max_length=16, choices=RunKind.choices, default=RunKind.TRAIN, db_index=True
    )
    source = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="analyses"
    )

    status = models.CharField(
        max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True
    )
    attempt = models.PositiveIntegerField(default=0)
    # Each claim by a worker gets a fresh token; later updates are conditional on it, so a
    # worker that lost its claim (reaped, cancelled) can no longer write.
    claim = models.UUIDField(null=True, blank=True)
    celery_task_id = models.CharField(max_length=64, blank=True)
    # Faults (experiments.actions.worker): a warm shutdown (redeploy) requeues the run without
    # using an attempt and counts here; the reaper stamps each re-send, and the last thing that
    # happened to the run outside its own code is told on its page (notice, notice_at).
    preemptions = models.PositiveIntegerField(default=0)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    resends = models.PositiveIntegerField(default=0)
    notice = models.CharField(max_length=500, blank=True)
    notice_at = models.DateTimeField(null=True, blank=True)

    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    loss = models.FloatField(null=True, blank=True)
    accuracy = models.FloatField(null=True, blank=True)
    test_accuracy = models.FloatField(null=True, blank=True)
    tokens_per_s = models.FloatField(null=True, blank=True)
    eta_s = models.FloatField(null=True, blank=True)

    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker_host = models.CharField(max_length=200, blank=True)
    device = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    result = models.JSONField(default=dict, blank=True)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"])]

    def __str__(self) -> str:
        return self.name or f"run {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("run", args=[self.pk])

    @property
    def is_analysis(self) -> bool:
        return self.kind != RunKind.TRAIN

    @property
    def imported(self) -> dict[str, Any] | None:
        """The provenance of a run imported from a demo bundle (it did not train here), as
        recorded by :func:`experiments.actions.imports.do_import_bundled_run`; else None."""
        found = self.result.get("imported") if isinstance(self.result, dict) else None
        return found if isinstance(found, dict) else None

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def queue_unreachable(self) -> bool:
        """Queued, but its job never reached the broker (down or hung when it was sent): it
        starts once the reaper re-sends it (experiments.dispatch)."""
        return self.status == RunStatus.QUEUED and not self.celery_task_id

    @property
    def heartbeat_overdue(self) -> bool:
        """Running, but its worker has been silent for longer than the heartbeat timeout: it is
        probably gone, and the reaper is about to requeue the run."""
        if self.status != RunStatus.RUNNING or self.heartbeat_at is None:
            return False
        silent = (timezone.now() - self.heartbeat_at).total_seconds()
        return silent > settings.H3LAB_HEARTBEAT_TIMEOUT_S

    @property
    def progress_fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0

    @property
    def duration_s(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()


class MetricPoint(models.Model):
    """One value of a metric series (``train_loss``, ``test_accuracy`` …) at a training step."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="metrics")
    name = models.CharField(max_length=64)
    step = models.PositiveIntegerField()
    value = models.FloatField()

    class Meta:
        ordering = ["run", "name", "step"]
        constraints = [
            models.UniqueConstraint(fields=["run", "name", "step"], name="metric_unique_point")
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} {self.name}@{self.step}"


class ArtifactKind(models.TextChoices):
    CHECKPOINT = "checkpoint", "checkpoint"
    CONFIG = "config", "config"
    PLOT = "plot", "plot"
    LOG = "log", "log"
    METRICS = "metrics", "metrics"
    PROBE = "probe", "probe"
    OTHER = "other", "other"


class Artifact(models.Model):
    """A file produced by a run. Stored under ``settings.ARTIFACTS_DIR`` and only ever served
    by the permission-checked download view."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=255)
    kind = models.CharField(max_length=16, choices=ArtifactKind.choices)
    path = models.CharField(max_length=500, help_text="relative to ARTIFACTS_DIR")
    content_type = models.CharField(max_length=100, default="application/octet-stream")
    size = models.PositiveBigIntegerField(help_text="plaintext size")
    sha256 = models.CharField(max_length=64, help_text="plaintext SHA-256")
    created_at = models.DateTimeField(default=timezone.now)
    # Encryption at rest (experiments.storage): below the public tier the stored file is
    # AES-256-GCM ciphertext under a per-artifact data key, kept only wrapped by the master key
    # ``key_id``. A public release re-stores it in the clear (encrypted=False, no key).
    # Crypto-shredding removes the wrapped key: the ciphertext can then never be read again.
    encrypted = models.BooleanField(default=False)
    key_id = models.CharField(max_length=64, blank=True, help_text="master key that wraps it")
    wrapped_key = models.BinaryField(null=True, blank=True, editable=False)
    shredded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "kind", "name"]
        constraints = [models.UniqueConstraint(fields=["run", "name"], name="artifact_unique_name")]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("artifact-download", args=[self.pk])

    @property
    def key_context(self) -> bytes:
        """What a wrapped data key is bound to (AES-GCM associated data): this artifact's
        identity, so a wrapped key copied onto another artifact's row does not unwrap."""
        return f"artifact:{self.run_id}:{self.name}".encode()

    @property
    def is_shredded(self) -> bool:
        return self.shredded_at is not None


class FindingStatus(models.TextChoices):
    DRAFT = "draft", "draft"
    IN_REVIEW = "in_review", "in review"
    RELEASED = "released", "released"
    RETRACTED = "retracted", "retracted"


class FindingQuerySet(models.QuerySet["Finding"]):
    def released(self) -> FindingQuerySet:
        """Findings at the public tier that have not been retracted."""
        return self.filter(tier=Tier.PUBLIC).exclude(status=FindingStatus.RETRACTED)

    def not_retracted(self) -> FindingQuerySet:
        return self.exclude(status=FindingStatus.RETRACTED)


class Finding(models.Model):
    """A result recorded from runs, with evidence. Starts private (team tier) and moves up one
    tier at a time through release decisions (:mod:`disclosure`)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="findings")
    title = models.CharField(max_length=300)
    body = models.TextField(help_text="Markdown; rendered and sanitized on display.")
    tier = models.IntegerField(choices=Tier.choices, default=Tier.TEAM, db_index=True)
    status = models.CharField(
        max_length=16, choices=FindingStatus.choices, default=FindingStatus.DRAFT, db_index=True
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    updated_at = models.DateTimeField(default=timezone.now)
    retracted_at = models.DateTimeField(null=True, blank=True)
    retraction_reason = models.TextField(blank=True)
    runs = models.ManyToManyField(Run, blank=True, related_name="findings")
    artifacts = models.ManyToManyField(Artifact, blank=True, related_name="findings")
    depends_on = models.ManyToManyField(
        "self", blank=True, symmetrical=False, related_name="dependents"
    )
    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    reveals = models.CharField(
        max_length=16, choices=Reveals.choices, default=Reveals.UNSPECIFIED, blank=True
    )

    objects = FindingQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "tier"])]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return reverse("finding", args=[self.pk])

    @property
    def is_retracted(self) -> bool:
        return self.status == FindingStatus.RETRACTED


class RevisionState(models.TextChoices):
    PENDING = "pending", "pending review"
    APPROVED = "approved", "approved"
    WITHDRAWN = "withdrawn", "withdrawn"


class FindingRevision(models.Model):
    """One version of a finding's content: title, body and what it cites.

    Readers always read the :class:`Finding` row, which holds the last *approved* revision.
    Once a finding has left the team tier its content is frozen: an edit is a pending revision
    that must pass review to the finding's current tier (:mod:`disclosure.actions.revisions`)
    before it is copied onto the finding. Revision 1 is the content as recorded.
    """

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    title = models.CharField(max_length=300)
    body = models.TextField()
    run_ids = models.JSONField(default=list)
    artifact_ids = models.JSONField(default=list)
    dependency_ids = models.JSONField(default=list)
    note = models.TextField(blank=True, help_text="what changed and why")
    state = models.CharField(
        max_length=16, choices=RevisionState.choices, default=RevisionState.PENDING
    )
    # The finding's tier when the revision was proposed (and approved): who may read it.
    tier = models.IntegerField(choices=Tier.choices, default=Tier.TEAM)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["finding", "number"]
        constraints = [
            models.UniqueConstraint(fields=["finding", "number"], name="one_number_per_revision"),
            models.UniqueConstraint(
                fields=["finding"],
                condition=models.Q(state="pending"),
                name="one_pending_revision_per_finding",
            ),
        ]

    def __str__(self) -> str:
        return f"revision {self.number} of finding #{self.finding_id}"


class MetricSnapshot(models.Model):
    """A metric value cited as evidence by a finding, frozen at the time it was recorded."""

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="snapshots")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+")
    name = models.CharField(max_length=64)
    step = models.PositiveIntegerField()
    value = models.FloatField()

    class Meta:
        ordering = ["finding", "run", "name"]

    def __str__(self) -> str:
        return f"finding {self.finding_id}: run {self.run_id} {self.name}@{self.step}"

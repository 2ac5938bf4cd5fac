"""Disclosure: tiers, grants, agreements, reviews, release decisions, notifications, audit.

Rows here change only through :mod:`disclosure.actions`, which writes an audit entry for each
change. Who may see what is decided only by :mod:`disclosure.policy`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase

from experiments.models import Finding, Project, Tier
from experiments.users import Viewer


class ImmutableError(Exception):
    """Raised on an attempt to change or delete a record that is immutable once written."""


class ImmutableModel(models.Model):
    """A record that may be created but never updated or deleted through the ORM."""

    class Meta:
        abstract = True

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None and not self._state.adding:
            raise ImmutableError(f"{type(self).__name__} records are immutable")
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise ImmutableError(f"{type(self).__name__} records are immutable")


# --- which group is cleared for which tier (data, not code) ------------------------------------


class GroupClearance(models.Model):
    """Members of ``group`` may read every project's findings at ``tier`` and above.

    The review board and the release managers are cleared for the review tier by the data
    migration; staff may change this in the admin. SECURITY: clearing a group for the team tier
    would expose every project's private work, so the lowest clearance allowed is review.
    """

    group = models.OneToOneField(Group, on_delete=models.CASCADE, related_name="clearance")
    tier = models.IntegerField(choices=Tier.choices, default=Tier.REVIEW)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(tier__gte=Tier.REVIEW), name="clearance_not_team_tier"
            )
        ]

    def __str__(self) -> str:
        return f"{self.group} ≥ {self.get_tier_display()}"


# --- agreements and grants ---------------------------------------------------------------------


class AgreementQuerySet(models.QuerySet["AgreementVersion"]):
    def in_force(self, now: datetime | None = None) -> AgreementQuerySet:
        return self.filter(effective_at__lte=now or timezone.now()).order_by("-version")

    def current(self, now: datetime | None = None) -> AgreementVersion | None:
        return self.in_force(now).first()


class AgreementVersion(ImmutableModel):
    """One version of the collaborator agreement. The newest version whose ``effective_at``
    has passed is *current*; a grant gives access only while its grantee has accepted the
    current version, so publishing a new version requires everyone to re-accept."""

    version = models.PositiveIntegerField(unique=True)
    title = models.CharField(max_length=200)
    text = models.TextField()
    effective_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)

    objects = AgreementQuerySet.as_manager()

    class Meta:
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"{self.title} v{self.version}"


class AgreementAcceptance(ImmutableModel):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    agreement = models.ForeignKey(
        AgreementVersion, on_delete=models.PROTECT, related_name="acceptances"
    )
    accepted_at = models.DateTimeField(default=timezone.now)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "agreement"], name="acceptance_once")
        ]

    def __str__(self) -> str:
        return f"user {self.user_id} accepted agreement {self.agreement_id}"


class GrantApproval(models.TextChoices):
    """Separation of duties: a grant given by a *delegated* project manager (guardian
    ``change_project``, not a release manager) takes effect only once a release manager other
    than its giver approves it."""

    NOT_NEEDED = "not_needed", "not needed"
    PENDING = "pending", "awaiting approval"
    APPROVED = "approved", "approved"
    DECLINED = "declined", "declined"


# The approval states in which a grant can give access (the policy's SQL reads these values).
EFFECTIVE_APPROVALS = (GrantApproval.NOT_NEEDED, GrantApproval.APPROVED)


class GrantState(models.TextChoices):
    """What a grant does now, worded once for every page that shows it."""

    ACTIVE = "active", "active"
    AWAITING_APPROVAL = "awaiting_approval", "awaiting a release manager's approval"
    DECLINED = "declined", "declined"
    AWAITING_AGREEMENT = "awaiting_agreement", "inactive until the agreement is accepted"
    EXPIRED = "expired", "expired"
    REVOKED = "revoked", "revoked"


class GrantQuerySet(models.QuerySet["Grant"]):
    def effective(self) -> GrantQuerySet:
        """Grants that need no approval or were approved (pending and declined ones give
        nothing)."""
        return self.filter(approval__in=EFFECTIVE_APPROVALS)

    def active(self, now: datetime | None = None) -> GrantQuerySet:
        return self.effective().filter(
            revoked_at__isnull=True, expires_at__gt=now or timezone.now()
        )

    def for_user(self, user: Viewer) -> GrantQuerySet:
        return self.filter(Q(user=user) | Q(group__user=user))


class Grant(models.Model):
    """Access for a collaborator (a user or a group) to a project's or one finding's findings at
    ``max_tier`` and above, until ``expires_at``, while the grantee has accepted the current
    agreement (``agreement`` records the version in force when the grant was given).

    SECURITY: grants are *not* guardian object permissions: guardian's backend would answer
    ``has_perm`` without checking expiry, revocation or agreement acceptance.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    finding = models.ForeignKey(
        Finding, null=True, blank=True, on_delete=models.CASCADE, related_name="grants"
    )
    max_tier = models.IntegerField(
        choices=[(Tier.REVIEW, "review"), (Tier.PARTNERS, "partners")], default=Tier.PARTNERS
    )
    agreement = models.ForeignKey(AgreementVersion, on_delete=models.PROTECT, related_name="+")
    note = models.CharField(max_length=300, blank=True)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoke_reason = models.CharField(max_length=300, blank=True)
    expiry_warned_at = models.DateTimeField(null=True, blank=True)
    expiry_notified_at = models.DateTimeField(null=True, blank=True)
    approval = models.CharField(
        max_length=16,
        choices=GrantApproval.choices,
        default=GrantApproval.NOT_NEEDED,
        db_index=True,
    )
    approval_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approval_at = models.DateTimeField(null=True, blank=True)
    approval_note = models.CharField(max_length=300, blank=True)

    objects = GrantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(user__isnull=False) & Q(group__isnull=True))
                | (Q(user__isnull=True) & Q(group__isnull=False)),
                name="grant_one_grantee",
            ),
            models.CheckConstraint(
                condition=(Q(project__isnull=False) & Q(finding__isnull=True))
                | (Q(project__isnull=True) & Q(finding__isnull=False)),
                name="grant_one_scope",
            ),
            models.CheckConstraint(condition=Q(max_tier__gte=Tier.REVIEW), name="grant_not_team"),
        ]
        indexes = [models.Index(fields=["user", "expires_at"]), models.Index(fields=["group"])]

    def __str__(self) -> str:
        return f"{self.grantee} → {self.scope}"

    @property
    def grantee(self) -> object:
        return self.user or self.group

    @property
    def scope(self) -> object:
        return self.project or self.finding

    def is_active(self, now: datetime | None = None) -> bool:
        return (
            self.approval in EFFECTIVE_APPROVALS
            and self.revoked_at is None
            and self.expires_at > (now or timezone.now())
        )

    def state(self, *, accepted: bool, now: datetime | None = None) -> GrantState:
        """The grant's state for a grantee who has (or has not) ``accepted`` the agreement in
        force: one wording for the grants page, the access page and the admin."""
        now = now or timezone.now()
        if self.revoked_at is not None:
            return GrantState.REVOKED
        if self.expires_at <= now:
            return GrantState.EXPIRED
        if self.approval == GrantApproval.PENDING:
            return GrantState.AWAITING_APPROVAL
        if self.approval == GrantApproval.DECLINED:
            return GrantState.DECLINED
        return GrantState.ACTIVE if accepted else GrantState.AWAITING_AGREEMENT


# --- guardian: delegated release management per project ----------------------------------------


class ProjectUserObjectPermission(UserObjectPermissionBase):
    """Direct-FK guardian rows: ``experiments.change_project`` on a project lets a user act as
    that project's release manager (schedule releases, manage its grants). Visibility never
    reads these rows; they decide actions only (:func:`disclosure.policy.can_manage_releases`).
    """

    content_object = models.ForeignKey(Project, on_delete=models.CASCADE)


class ProjectGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Project, on_delete=models.CASCADE)


# --- dual-use review ---------------------------------------------------------------------------


class CapabilityUplift(models.IntegerChoices):
    NONE = 0, "none"
    LOW = 1, "low"
    MODERATE = 2, "moderate"
    HIGH = 3, "high"
    CRITICAL = 4, "critical"


class AlignmentValue(models.IntegerChoices):
    NONE = 0, "none"
    LOW = 1, "low"
    MODERATE = 2, "moderate"
    HIGH = 3, "high"


class Assessment(models.Model):
    """A reviewer's dual-use rating of a finding (one per reviewer; re-assessing replaces it
    and the audit log keeps the old values)."""

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="assessments")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    capability_uplift = models.IntegerField(choices=CapabilityUplift.choices)
    alignment_value = models.IntegerField(choices=AlignmentValue.choices)
    categories = models.JSONField(default=list, blank=True)
    rationale = models.TextField()
    evidence_links = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["finding", "reviewer"], name="assessment_once")
        ]

    def __str__(self) -> str:
        return f"assessment of finding {self.finding_id} by user {self.reviewer_id}"


class Recusal(ImmutableModel):
    """A reviewer's conflict of interest. SECURITY: it also withdraws the reviewer's
    review-board view of the finding (see :mod:`disclosure.policy`)."""

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="recusals")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.CharField(max_length=300)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["finding", "reviewer"], name="recusal_once")]
        indexes = [models.Index(fields=["reviewer", "finding"])]

    def __str__(self) -> str:
        return f"user {self.reviewer_id} recused from finding {self.finding_id}"


# --- release policy (versioned data) -----------------------------------------------------------


class ReleasePolicyQuerySet(models.QuerySet["ReleasePolicy"]):
    def current(self) -> ReleasePolicy | None:
        return self.order_by("-version").first()


class ReleasePolicy(models.Model):
    """A version of the rules for stepping a finding up a tier. Staff add a new version in the
    admin; a version that has been used by a release decision is never edited again (its rules
    become read-only), so every decision names the exact rules it followed."""

    version = models.PositiveIntegerField(unique=True)
    notes = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = ReleasePolicyQuerySet.as_manager()

    class Meta:
        ordering = ["-version"]
        verbose_name_plural = "release policies"

    def __str__(self) -> str:
        return f"release policy v{self.version}"

    def rule_for(self, target_tier: int, uplift: int) -> ReleaseRule | None:
        """The rule for a step to ``target_tier`` given the highest assessed capability uplift:
        the matching rule with the highest ``min_uplift`` not above ``uplift``."""
        return choose_rule(self.rules.all(), target_tier, uplift)


def choose_rule(rules: Iterable[ReleaseRule], target_tier: int, uplift: int) -> ReleaseRule | None:
    """Of one policy's ``rules``, the one for a step to ``target_tier``: the matching rule with
    the highest ``min_uplift`` not above ``uplift``."""
    matching = [r for r in rules if r.target_tier == target_tier and r.min_uplift <= uplift]
    return max(matching, key=lambda r: r.min_uplift, default=None)


class ReleaseRule(models.Model):
    policy = models.ForeignKey(ReleasePolicy, on_delete=models.CASCADE, related_name="rules")
    target_tier = models.IntegerField(choices=Tier.choices)
    min_uplift = models.IntegerField(
        choices=CapabilityUplift.choices,
        default=CapabilityUplift.NONE,
        help_text="applies when the highest assessed capability uplift is at least this",
    )
    approvals_required = models.PositiveIntegerField(default=1)
    min_embargo_hours = models.PositiveIntegerField(default=0)
    requires_assessment = models.BooleanField(default=True)
    blocked = models.BooleanField(default=False, help_text="never release at this rating")

    class Meta:
        ordering = ["policy", "target_tier", "min_uplift"]
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "target_tier", "min_uplift"], name="rule_unique"
            ),
            models.CheckConstraint(condition=Q(target_tier__gte=Tier.REVIEW), name="rule_step_up"),
        ]

    def __str__(self) -> str:
        return f"policy {self.policy_id} rule for {Tier(self.target_tier).label}"


# --- release requests, votes, decisions --------------------------------------------------------


class RequestState(models.TextChoices):
    OPEN = "open", "awaiting approvals"
    SCHEDULED = "scheduled", "scheduled"
    RELEASED = "released", "released"
    CANCELLED = "cancelled", "cancelled"


class ReleaseRequestQuerySet(models.QuerySet["ReleaseRequest"]):
    def pending(self) -> ReleaseRequestQuerySet:
        return self.filter(state__in=(RequestState.OPEN, RequestState.SCHEDULED))

    def due(self, now: datetime | None = None) -> ReleaseRequestQuerySet:
        return self.filter(state=RequestState.SCHEDULED, embargo_until__lte=now or timezone.now())


class ReleaseRequest(models.Model):
    """A request to move a finding one tier up. Reviewers vote on it; a release manager
    schedules it at an embargo instant (UTC); the scheduler re-checks every gate then."""

    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="release_requests")
    from_tier = models.IntegerField(choices=Tier.choices)
    target_tier = models.IntegerField(choices=Tier.choices)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_at = models.DateTimeField(default=timezone.now)
    rationale = models.TextField(blank=True)
    state = models.CharField(
        max_length=16, choices=RequestState.choices, default=RequestState.OPEN, db_index=True
    )
    embargo_until = models.DateTimeField(null=True, blank=True, db_index=True)
    scheduled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_checked_at = models.DateTimeField(null=True, blank=True)
    hold_reason = models.TextField(blank=True)
    # A revision request keeps the finding at its tier (from_tier == target_tier) and, once
    # every gate of that tier passes, makes the revision what readers see.
    revision = models.OneToOneField(
        "experiments.FindingRevision",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="request",
    )

    objects = ReleaseRequestQuerySet.as_manager()

    class Meta:
        ordering = ["-requested_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["finding"],
                condition=Q(state__in=["open", "scheduled"]),
                name="one_pending_request_per_finding",
            )
        ]

    def __str__(self) -> str:
        if self.revision_id is not None:
            return f"revision of finding #{self.finding_id} at {Tier(self.target_tier).label}"
        return f"finding #{self.finding_id} → {Tier(self.target_tier).label}"


class VoteKind(models.TextChoices):
    APPROVE = "approve", "approve"
    OBJECT = "object", "object"


class Vote(models.Model):
    """A reviewer's approval of, or objection to, one release request. An objection blocks the
    step until its author withdraws it or a quorum of other board members clears it
    (:class:`ObjectionClearance`); ``resolved_*`` record which."""

    request = models.ForeignKey(ReleaseRequest, on_delete=models.CASCADE, related_name="votes")
    finding = models.ForeignKey(Finding, on_delete=models.CASCADE, related_name="votes")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    kind = models.CharField(max_length=8, choices=VoteKind.choices)
    rationale = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    resolution = models.TextField(blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["request", "reviewer"], name="vote_once_per_request")
        ]

    def __str__(self) -> str:
        return f"{self.kind} by user {self.reviewer_id} on release request {self.request_id}"

    @property
    def is_open_objection(self) -> bool:
        return self.kind == VoteKind.OBJECT and self.resolved_at is None


class ObjectionClearance(ImmutableModel):
    """One board member's vote to clear someone else's objection. Separation of duties: no one
    person (release manager included) overrides an objection; it is cleared when enough board
    members other than its author agree (:func:`disclosure.actions.review.objection_quorum`)."""

    objection = models.ForeignKey(Vote, on_delete=models.CASCADE, related_name="clearances")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    rationale = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["objection", "reviewer"], name="clear_objection_once")
        ]

    def __str__(self) -> str:
        return f"user {self.reviewer_id} cleared objection {self.objection_id}"


class ReleaseDecision(ImmutableModel):
    """An immutable record of a finding moving tiers: who (``decided_by`` is null when the
    scheduler promoted it), when, under which policy version, why, and which approvals."""

    finding = models.ForeignKey(Finding, on_delete=models.PROTECT, related_name="decisions")
    request = models.ForeignKey(
        ReleaseRequest, null=True, on_delete=models.PROTECT, related_name="decisions"
    )
    from_tier = models.IntegerField(choices=Tier.choices)
    to_tier = models.IntegerField(choices=Tier.choices)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(default=timezone.now)
    policy = models.ForeignKey(ReleasePolicy, on_delete=models.PROTECT, related_name="decisions")
    approvals = models.JSONField(default=list)
    rationale = models.TextField()

    class Meta:
        ordering = ["decided_at"]

    def __str__(self) -> str:
        return (
            f"finding {self.finding_id}: {Tier(self.from_tier).label} → {Tier(self.to_tier).label}"
        )


# --- notifications -----------------------------------------------------------------------------


class NotificationKind(models.TextChoices):
    REVIEW_REQUESTED = "review_requested", "review requested"
    ASSESSMENT = "assessment", "assessment recorded"
    VOTE = "vote", "approval or objection"
    DECISION = "decision", "release decision"
    RELEASE_HELD = "release_held", "release held back"
    GRANT_GIVEN = "grant_given", "access granted"
    GRANT_EXPIRING = "grant_expiring", "access expiring"
    GRANT_EXPIRED = "grant_expired", "access expired"
    GRANT_REVOKED = "grant_revoked", "access revoked"
    AGREEMENT = "agreement", "agreement changed"
    RETRACTION = "retraction", "finding retracted"
    PARTNER_COPY = "partner_copy", "partner copy ready"


class Notification(models.Model):
    """An inbox row. SECURITY: a notice about a finding stores ``{finding}`` in its subject,
    never the title; the inbox names the finding only if the reader may read it when they
    look (:func:`Notification.subject_for`), and email never names it."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications"
    )
    kind = models.CharField(max_length=32, choices=NotificationKind.choices)
    subject = models.CharField(max_length=200)
    body = models.TextField(blank=True)
    url = models.CharField(max_length=300, blank=True)
    finding = models.ForeignKey(
        Finding, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "read_at"])]

    def __str__(self) -> str:
        return f"notice #{self.pk} to {self.user_id}"

    def subject_for(self, *, readable: bool) -> str:
        """The subject as its reader may see it now."""
        if self.finding_id is None:
            return self.subject
        name = self.finding.title if readable and self.finding else "a finding you cannot see"
        return self.subject.replace(FINDING_PLACEHOLDER, name)


FINDING_PLACEHOLDER = "{finding}"


# --- audit log ---------------------------------------------------------------------------------


class AuditEntry(models.Model):
    """One entry of the append-only, hash-chained audit log (see :mod:`disclosure.audit`).

    No foreign keys with cascades: deleting a user or a finding must never touch the log (on
    PostgreSQL a trigger refuses UPDATE and DELETE outright). ``actor_id`` is kept without a
    database constraint and ``actor_name`` snapshots the username.
    """

    created_at = models.DateTimeField(default=timezone.now)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=300, blank=True)
    finding_id = models.BigIntegerField(null=True, blank=True, help_text="finding concerned")
    old = models.JSONField(null=True, blank=True)
    new = models.JSONField(null=True, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]
        verbose_name_plural = "audit entries"
        indexes = [
            models.Index(fields=["finding_id", "action"]),
            models.Index(fields=["action", "created_at"]),
            models.Index(fields=["actor", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.object_type}:{self.object_id}"


class AuditHead(models.Model):
    """The chain's head (a single row): the last entry's id and hash. Appends lock this row, so
    entries are chained one at a time, and :func:`disclosure.audit.verify` compares the end of
    the chain with it, so deleting the newest entries is detected too."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    last_id = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default="0" * 64)

    def __str__(self) -> str:
        return f"audit log head at entry {self.last_id}"


# --- publication: signing keys, exports, recipient marks ------------------------------------------


class SigningKeyStatus(models.TextChoices):
    CURRENT = "current", "current"
    RETIRED = "retired", "retired (verifies old bundles)"
    REVOKED = "revoked", "revoked (do not trust)"


class SigningKey(models.Model):
    """An Ed25519 key that signs publication bundles. The private key is stored only wrapped by
    the master key (bound to ``key_id``); the public key is published at ``/keys/``. Rotation
    retires the current key, which stays published so old bundles keep verifying."""

    key_id = models.CharField(max_length=64, unique=True)
    public_key_pem = models.TextField()
    wrapped_private_key = models.BinaryField(editable=False)
    master_key_id = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=SigningKeyStatus.choices, default=SigningKeyStatus.CURRENT
    )
    created_at = models.DateTimeField(default=timezone.now)
    retired_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"], condition=Q(status="current"), name="one_current_signing_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.key_id} ({self.status})"

    @property
    def key_context(self) -> bytes:
        return f"signing-key:{self.key_id}".encode()


class ExportKind(models.TextChoices):
    PUBLIC = "public", "publication bundle"
    PARTNER = "partner", "partner copy"


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "building"
    SUCCEEDED = "succeeded", "ready"
    FAILED = "failed", "failed"
    REFUSED = "refused", "refused"


class Export(models.Model):
    """One requested bundle: a publication bundle of public findings, or a recipient-marked
    partner copy for one collaborator. Built by a Celery job (:mod:`disclosure.exports`); the
    row is the source of truth for its state and progress. Partner copies are stored encrypted
    (they hold partner-tier content); publication bundles in the clear."""

    kind = models.CharField(max_length=16, choices=ExportKind.choices)
    status = models.CharField(
        max_length=16, choices=ExportStatus.choices, default=ExportStatus.QUEUED, db_index=True
    )
    progress = models.FloatField(default=0.0)
    message = models.TextField(blank=True)
    blockers = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="partner_copies",
    )
    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    findings = models.ManyToManyField(Finding, related_name="exports")
    name = models.CharField(max_length=120)
    path = models.CharField(max_length=300, blank=True, help_text="relative to EXPORTS_DIR")
    size = models.PositiveBigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True, help_text="of the archive")
    signing_key_id = models.CharField(max_length=64, blank=True)
    encrypted = models.BooleanField(default=False)
    master_key_id = models.CharField(max_length=64, blank=True)
    wrapped_key = models.BinaryField(null=True, blank=True, editable=False)
    celery_task_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"export #{self.pk} ({self.get_kind_display()})"

    @property
    def key_context(self) -> bytes:
        return f"export:{self.pk}".encode()

    @property
    def filename(self) -> str:
        return f"{self.name}.tar.gz"

    @property
    def is_active(self) -> bool:
        return self.status in (ExportStatus.QUEUED, ExportStatus.RUNNING)

    @property
    def queue_unreachable(self) -> bool:
        """Queued, but its build job never reached the broker (experiments.dispatch)."""
        return self.status == ExportStatus.QUEUED and not self.celery_task_id


class RecipientMark(models.Model):
    """The secret that marks one partner copy (:func:`disclosure.marks.mark_text`) and the
    token written into its files' metadata. ``manage.py trace_leak`` tries every recorded mark.

    SECURITY: a recipient who learned their secret could strip the wording marks; it is shown
    nowhere and never leaves the server."""

    export = models.OneToOneField(Export, on_delete=models.PROTECT, related_name="mark")
    recipient = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    secret = models.CharField(max_length=64)
    token = models.CharField(max_length=32, unique=True)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"mark {self.token} → {self.recipient}"

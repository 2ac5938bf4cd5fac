"""Admin pages for disclosure data. SECURITY: querysets come from :mod:`disclosure.policy` (a
staff user sees here only what they may see on the site); records that must not change
(decisions, the audit log, recusals, acceptances) are read-only; changes go through actions.

Staff edit the *data* that drives policy: group clearances, agreement versions (a new version
is published, never edited) and release-policy versions (a used version is frozen).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from disclosure import policy
from disclosure.actions.agreements import do_publish_agreement
from disclosure.actions.grants import do_revoke_grant
from disclosure.models import (
    AgreementVersion,
    Assessment,
    AuditEntry,
    Grant,
    GroupClearance,
    ReleaseDecision,
    ReleasePolicy,
    ReleaseRequest,
    ReleaseRule,
    Vote,
)


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class FindingScopedAdmin(ReadOnlyAdmin):
    """Rows about a finding: shown only for findings the staff user may read."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        visible = policy.visible_findings(request.user).values("pk")
        return super().get_queryset(request).filter(finding__in=visible)


@admin.register(GroupClearance)
class GroupClearanceAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("group", "tier")


@admin.register(AgreementVersion)
class AgreementVersionAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("version", "title", "effective_at")
    fields = ("title", "text", "effective_at")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None  # published versions are immutable: publish a new one

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        published = do_publish_agreement(
            title=obj.title, text=obj.text, effective_at=obj.effective_at, acting_user=request.user
        )
        obj.pk, obj.version = published.pk, published.version
        obj._state.adding = False


class ReleaseRuleInline(admin.TabularInline):  # type: ignore[type-arg]
    model = ReleaseRule
    extra = 0

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is None or not obj.decisions.exists()

    has_add_permission = has_change_permission  # type: ignore[assignment]
    has_delete_permission = has_change_permission  # type: ignore[assignment]


@admin.register(ReleasePolicy)
class ReleasePolicyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    list_display = ("version", "created_at", "notes")
    inlines = [ReleaseRuleInline]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A version that decided a release is frozen, so decisions name the rules they used.
        return obj is None or not obj.decisions.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Grant)
class GrantAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "max_tier", "expires_at", "revoked_at", "agreement")
    list_filter = ("max_tier",)
    actions = ["revoke"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        projects = policy.manageable_projects(request.user).values("pk")
        qs = super().get_queryset(request)
        return qs.filter(project__in=projects) | qs.filter(finding__project__in=projects)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return True

    @admin.action(description="Revoke selected grants")
    def revoke(self, request: HttpRequest, queryset: QuerySet[Grant]) -> None:
        n = sum(
            do_revoke_grant(g, reason="revoked in admin", acting_user=request.user)
            for g in queryset
        )
        self.message_user(request, f"Revoked {n} grant(s).")


@admin.register(ReleaseRequest)
class ReleaseRequestAdmin(FindingScopedAdmin):
    list_display = ("finding", "from_tier", "target_tier", "state", "embargo_until", "hold_reason")
    list_filter = ("state",)


@admin.register(ReleaseDecision)
class ReleaseDecisionAdmin(FindingScopedAdmin):
    list_display = ("finding", "from_tier", "to_tier", "decided_by", "decided_at", "policy")


@admin.register(Assessment)
class AssessmentAdmin(FindingScopedAdmin):
    list_display = ("finding", "reviewer", "capability_uplift", "alignment_value")


@admin.register(Vote)
class VoteAdmin(FindingScopedAdmin):
    list_display = ("finding", "reviewer", "kind", "resolved_at")


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "actor_name", "action", "object_type", "object_id", "ip")
    list_filter = ("action",)
    search_fields = ("actor_name", "object_repr")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)
        return qs if policy.can_view_audit(request.user) else qs.none()

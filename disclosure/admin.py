"""Admin pages for disclosure data.

SECURITY: the admin is a window, not a side door. Every governed model is read-only here; the
few saves the admin offers go through the ``do_*`` actions (their checks and audit entries):
publishing an agreement version, setting a group's clearance (superusers), revoking grants.
For staff who are not superusers, lists, search, filters and foreign-key / many-to-many choices
come from :mod:`disclosure.policy`, so the admin shows no more than the site would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from disclosure import policy
from disclosure.actions.agreements import do_publish_agreement
from disclosure.actions.grants import do_revoke_grant, do_set_group_clearance
from disclosure.models import (
    AgreementVersion,
    Assessment,
    AuditEntry,
    Grant,
    GroupClearance,
    ObjectionClearance,
    ReleaseDecision,
    ReleasePolicy,
    ReleaseRequest,
    ReleaseRule,
    Vote,
)
from experiments.models import Artifact, Experiment, Finding, Project, Run
from experiments.users import Viewer


def _visible_experiments(user: Viewer) -> QuerySet[Experiment]:
    return Experiment.objects.filter(project__in=policy.visible_projects(user).values("pk"))


# Which rows of a model a user may see, wherever the admin offers them (choices, filters).
VISIBLE: dict[type[Model], Callable[[Viewer], QuerySet[Any]]] = {
    Project: policy.visible_projects,
    Experiment: _visible_experiments,
    Run: policy.visible_runs,
    Artifact: policy.visible_artifacts,
    Finding: policy.visible_findings,
}


class GovernedAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Read-only, and restricted to what the policy lets the user see.

    ``policy_queryset(user)`` gives the rows of the list and of the change pages (an object
    outside it is "doesn't exist", like a 404). Related choices are limited by :data:`VISIBLE`;
    a foreign key in ``list_filter`` lists only values that occur in the visible rows."""

    policy_queryset: Callable[[Viewer], QuerySet[Any]] | None = None

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        restrict = type(self).policy_queryset
        if restrict is None:
            return super().get_queryset(request)
        return restrict(request.user)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_list_filter(self, request: HttpRequest) -> Any:
        # SECURITY: a plain foreign-key filter lists every row of the related table (every
        # project's name); RelatedOnlyFieldListFilter lists the values of visible rows only.
        filters: list[Any] = []
        for f in super().get_list_filter(request):
            if isinstance(f, str) and "__" not in f:
                field = self.model._meta.get_field(f)
                if field.is_relation:
                    filters.append((f, admin.RelatedOnlyFieldListFilter))
                    continue
            filters.append(f)
        return filters

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        found, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        # Search joins may reach rows through relations; keep only the visible ones.
        return found.filter(pk__in=self.get_queryset(request).values("pk")), may_have_duplicates

    def _restrict(self, db_field: Any, request: HttpRequest, kwargs: dict[str, Any]) -> None:
        visible = VISIBLE.get(db_field.related_model)
        if visible is not None:
            kwargs["queryset"] = visible(request.user)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        self._restrict(db_field, request, kwargs)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def formfield_for_manytomany(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        self._restrict(db_field, request, kwargs)
        return super().formfield_for_manytomany(db_field, request, **kwargs)


def findings_of(model: type[Model]) -> Callable[[Viewer], QuerySet[Any]]:
    """Rows about a finding: only for findings the user may read."""

    def visible(user: Viewer) -> QuerySet[Any]:
        readable = policy.visible_findings(user).values("pk")
        return model._default_manager.filter(finding__in=readable)

    return visible


def _audit_readers(user: Viewer) -> QuerySet[AuditEntry]:
    return AuditEntry.objects.all() if policy.can_view_audit(user) else AuditEntry.objects.none()


@admin.register(GroupClearance)
class GroupClearanceAdmin(GovernedAdmin):
    """Which group is cleared for which tier. Superusers change it, through
    :func:`do_set_group_clearance` (audited)."""

    list_display = ("group", "tier")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return policy.is_lab_admin(request.user)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return policy.is_lab_admin(request.user)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        saved = do_set_group_clearance(obj.group, obj.tier, acting_user=request.user)
        obj.pk = saved.pk
        obj._state.adding = False


@admin.register(AgreementVersion)
class AgreementVersionAdmin(GovernedAdmin):
    list_display = ("version", "title", "effective_at")
    fields = ("title", "text", "effective_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super(GovernedAdmin, self).has_add_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Published versions are immutable: the add form publishes a new one.
        return obj is None and super(GovernedAdmin, self).has_change_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        published = do_publish_agreement(
            title=obj.title, text=obj.text, effective_at=obj.effective_at, acting_user=request.user
        )
        obj.pk, obj.version = published.pk, published.version
        obj._state.adding = False


class ReleaseRuleInline(admin.TabularInline):  # type: ignore[type-arg]
    model = ReleaseRule
    extra = 0

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ReleasePolicy)
class ReleasePolicyAdmin(GovernedAdmin):
    """Shown, not edited: a policy version decides releases, so a new one is added by a
    migration or command that writes its audit entry, never edited in place."""

    list_display = ("version", "created_at", "notes")
    inlines = [ReleaseRuleInline]


@admin.register(Grant)
class GrantAdmin(GovernedAdmin):
    policy_queryset = staticmethod(policy.manageable_grants)
    list_display = ("__str__", "max_tier", "expires_at", "approval", "revoked_at", "agreement")
    list_filter = ("max_tier", "approval")
    actions = ["revoke"]

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return policy.manageable_projects(request.user).exists()

    @admin.action(description="Revoke selected grants", permissions=["revoke"])
    def revoke(self, request: HttpRequest, queryset: QuerySet[Grant]) -> None:
        n = sum(
            do_revoke_grant(g, reason="revoked in admin", acting_user=request.user)
            for g in queryset
        )
        self.message_user(request, f"Revoked {n} grant(s).")

    def has_revoke_permission(self, request: HttpRequest) -> bool:
        return policy.manageable_projects(request.user).exists()


@admin.register(ReleaseRequest)
class ReleaseRequestAdmin(GovernedAdmin):
    policy_queryset = staticmethod(findings_of(ReleaseRequest))
    list_display = ("finding", "from_tier", "target_tier", "state", "embargo_until", "hold_reason")
    list_filter = ("state",)


@admin.register(ReleaseDecision)
class ReleaseDecisionAdmin(GovernedAdmin):
    policy_queryset = staticmethod(findings_of(ReleaseDecision))
    list_display = ("finding", "from_tier", "to_tier", "decided_by", "decided_at", "policy")


@admin.register(Assessment)
class AssessmentAdmin(GovernedAdmin):
    policy_queryset = staticmethod(findings_of(Assessment))
    list_display = ("finding", "reviewer", "capability_uplift", "alignment_value")


@admin.register(Vote)
class VoteAdmin(GovernedAdmin):
    policy_queryset = staticmethod(findings_of(Vote))
    list_display = ("finding", "reviewer", "kind", "resolved_at")


@admin.register(ObjectionClearance)
class ObjectionClearanceAdmin(GovernedAdmin):
    @staticmethod
    def policy_queryset(user: Viewer) -> QuerySet[Any]:
        readable = policy.visible_findings(user).values("pk")
        return ObjectionClearance.objects.filter(objection__finding__in=readable)

    list_display = ("objection", "reviewer", "created_at")


@admin.register(AuditEntry)
class AuditEntryAdmin(GovernedAdmin):
    policy_queryset = staticmethod(_audit_readers)
    list_display = ("id", "created_at", "actor_name", "action", "object_type", "object_id", "ip")
    list_filter = ("action",)
    search_fields = ("actor_name", "object_repr")

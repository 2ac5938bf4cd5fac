"""Admin pages. SECURITY: every queryset comes from :mod:`disclosure.policy`, so staff see in
the admin exactly what they may see on the site; governed changes go through actions."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from disclosure import policy
from experiments import actions
from experiments.models import Artifact, Experiment, Finding, MetricPoint, Project, Run


class PolicyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    policy_queryset: Any = None

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return type(self).policy_queryset(request.user)


@admin.register(Project)
class ProjectAdmin(PolicyAdmin):
    policy_queryset = staticmethod(policy.visible_projects)
    list_display = ("name", "slug", "created_at")
    search_fields = ("name", "slug")
    readonly_fields = ("group",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Projects are created with their member group by actions.do_create_project.
        return False


@admin.register(Experiment)
class ExperimentAdmin(PolicyAdmin):
    list_display = ("name", "project", "created_at")
    list_filter = ("project",)

    @staticmethod
    def policy_queryset(user: Any) -> QuerySet[Any]:
        return Experiment.objects.filter(project__in=policy.visible_projects(user).values("pk"))


@admin.register(Run)
class RunAdmin(PolicyAdmin):
    policy_queryset = staticmethod(policy.visible_runs)
    list_display = ("id", "project", "preset", "task", "status", "attempt", "step", "created_at")
    list_filter = ("status", "preset", "task", "queue")
    list_select_related = ("project",)
    readonly_fields = [f.name for f in Run._meta.fields]
    actions = ["cancel_runs"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        n = sum(actions.do_cancel_run(run, acting_user=request.user) for run in queryset)
        self.message_user(request, f"Cancelled {n} run(s).")


@admin.register(MetricPoint)
class MetricPointAdmin(PolicyAdmin):
    list_display = ("run", "name", "step", "value")
    list_filter = ("name",)

    @staticmethod
    def policy_queryset(user: Any) -> QuerySet[Any]:
        return MetricPoint.objects.filter(run__in=policy.visible_runs(user).values("pk"))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Artifact)
class ArtifactAdmin(PolicyAdmin):
    policy_queryset = staticmethod(policy.visible_artifacts)
    list_display = ("name", "run", "kind", "size", "sha256")
    list_filter = ("kind",)
    readonly_fields = ("run", "project", "name", "kind", "path", "size", "sha256", "content_type")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Finding)
class FindingAdmin(PolicyAdmin):
    policy_queryset = staticmethod(policy.visible_findings)
    list_display = ("title", "project", "tier", "status", "created_at")
    list_filter = ("tier", "status")
    search_fields = ("title",)
    # Tier and status move only through release decisions and retraction (disclosure actions).
    readonly_fields = ("tier", "status", "retracted_at", "public_id")

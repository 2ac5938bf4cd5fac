"""Admin pages for the experiments app: read-only windows on what the policy lets the staff
user see (see :class:`disclosure.admin.GovernedAdmin`). Governed changes go through actions:
the one offered here is cancelling runs (:func:`experiments.do_cancel_run`)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from disclosure import policy
from disclosure.admin import GovernedAdmin
from experiments.actions.runs import do_cancel_run
from experiments.models import Artifact, Experiment, Finding, MetricPoint, Project, Run
from experiments.users import Viewer


@admin.register(Project)
class ProjectAdmin(GovernedAdmin):
    """Projects and their member groups are created by ``do_create_project``; membership
    changes (here through the user and group admin) are audited by a signal."""

    policy_queryset = staticmethod(policy.visible_projects)
    list_display = ("name", "slug", "created_at")
    search_fields = ("name", "slug")


@admin.register(Experiment)
class ExperimentAdmin(GovernedAdmin):
    list_display = ("name", "project", "created_at")
    list_filter = ("project",)

    @staticmethod
    def policy_queryset(user: Viewer) -> QuerySet[Any]:
        return Experiment.objects.filter(project__in=policy.visible_projects(user).values("pk"))


@admin.register(Run)
class RunAdmin(GovernedAdmin):
    policy_queryset = staticmethod(policy.visible_runs)
    list_display = ("id", "project", "preset", "task", "status", "attempt", "step", "created_at")
    list_filter = ("status", "preset", "task", "queue", "project")
    list_select_related = ("project",)
    actions = ["cancel_runs"]

    @admin.action(description="Cancel selected runs", permissions=["cancel"])
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        n = sum(
            do_cancel_run(run, acting_user=request.user)
            for run in queryset
            if policy.can_manage_run(request.user, run)
        )
        self.message_user(request, f"Cancelled {n} run(s).")

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return policy.visible_runs(request.user).exists()


@admin.register(MetricPoint)
class MetricPointAdmin(GovernedAdmin):
    list_display = ("run", "name", "step", "value")
    list_filter = ("name",)

    @staticmethod
    def policy_queryset(user: Viewer) -> QuerySet[Any]:
        return MetricPoint.objects.filter(run__in=policy.visible_runs(user).values("pk"))


@admin.register(Artifact)
class ArtifactAdmin(GovernedAdmin):
    policy_queryset = staticmethod(policy.visible_artifacts)
    list_display = ("name", "project", "kind", "size", "sha256", "shredded_at")
    list_filter = ("kind",)
    # SECURITY: a cited artifact is visible beyond the team; its run (a name) is not.
    exclude = ("wrapped_key", "run", "path")


@admin.register(Finding)
class FindingAdmin(GovernedAdmin):
    """Findings change through the site's actions (record, edit, review, release, retract)."""

    policy_queryset = staticmethod(policy.visible_findings)
    list_display = ("title", "project", "tier", "status", "created_at")
    list_filter = ("tier", "status", "project")
    search_fields = ("title",)
    # SECURITY: readers beyond the team may not see the cited runs or every dependency; the
    # finding page shows what each reader may see of them.
    exclude = ("runs", "depends_on")

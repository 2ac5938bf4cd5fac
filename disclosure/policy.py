"""The one place that decides who may see what.

Every path to a project, run, artifact or finding — pages, lists, search, downloads, API,
exports, admin — asks this module. Lists get a queryset filtered in SQL (a constant number of
queries, whatever the number of rows); single objects come from :func:`get_visible_or_404`,
which raises ``Http404`` for missing and forbidden alike, so a probe learns nothing.

Tiers (:class:`experiments.models.Tier`) are ordered: a finding at tier *t* is visible to
everyone cleared for *t* or any tier above it.

- team (0): members of the finding's project (the project's group)
- review (1): + the review board
- partners (2): + collaborators with an active grant (see :mod:`disclosure.models`)
- public (3): everyone, anonymous included

Retracted findings drop out of every list immediately; their tombstone page is separate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from django.db.models import Model, Q, QuerySet
from django.http import Http404

from experiments.models import Artifact, Finding, FindingStatus, Project, Run, Tier

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

    AnyUser = AbstractBaseUser | AnonymousUser

M = TypeVar("M", bound=Model)


def _authenticated(user: Any) -> bool:
    return bool(user is not None and user.is_authenticated and user.is_active)


def is_lab_admin(user: Any) -> bool:
    """Superusers administer the lab and see everything (and every read is audited)."""
    return _authenticated(user) and bool(user.is_superuser)


def member_projects(user: Any) -> QuerySet[Project]:
    """Projects whose team the user belongs to (lazy; usable as a subquery)."""
    if not _authenticated(user):
        return Project.objects.none()
    if is_lab_admin(user):
        return Project.objects.all()
    return Project.objects.filter(group__user=user)


def is_member(user: Any, project: Project) -> bool:
    return member_projects(user).filter(pk=project.pk).exists()


# --- projects and runs: team only -------------------------------------------------------------


def visible_projects(user: Any) -> QuerySet[Project]:
    return member_projects(user)


def visible_runs(user: Any) -> QuerySet[Run]:
    """Runs are working material: visible to their project's team only."""
    if is_lab_admin(user):
        return Run.objects.all()
    return Run.objects.filter(project__in=member_projects(user).values("pk"))


# --- findings ---------------------------------------------------------------------------------


def finding_visibility_q(user: Any) -> Q:
    """A Q over Finding that is true exactly for the findings ``user`` may read."""
    public = Q(tier=Tier.PUBLIC) & ~Q(status=FindingStatus.RETRACTED)
    if not _authenticated(user):
        return public
    if is_lab_admin(user):
        return Q()
    team = Q(project__in=member_projects(user).values("pk"))
    return public | team


def visible_findings(user: Any) -> QuerySet[Finding]:
    return Finding.objects.filter(finding_visibility_q(user))


# --- artifacts --------------------------------------------------------------------------------


def visible_artifacts(user: Any) -> QuerySet[Artifact]:
    """Team members see their runs' artifacts; others only artifacts cited as evidence by a
    finding they can read at the public tier (released evidence)."""
    if is_lab_admin(user):
        return Artifact.objects.all()
    released = Q(
        findings__in=Finding.objects.filter(tier=Tier.PUBLIC)
        .exclude(status=FindingStatus.RETRACTED)
        .values("pk")
    )
    if not _authenticated(user):
        return Artifact.objects.filter(released).distinct()
    team = Q(project__in=member_projects(user).values("pk"))
    return Artifact.objects.filter(team | released).distinct()


# --- single objects ---------------------------------------------------------------------------


def get_visible_or_404(queryset: QuerySet[M], **lookup: Any) -> M:
    """Fetch one object from a policy-restricted queryset.

    SECURITY: missing and forbidden both raise Http404 with the same message, so the response
    does not reveal whether the object exists.
    """
    try:
        return queryset.get(**lookup)
    except (queryset.model.DoesNotExist, queryset.model.MultipleObjectsReturned, ValueError):
        raise Http404("Not found.") from None


def get_project_or_404(user: Any, slug: str) -> Project:
    return get_visible_or_404(visible_projects(user), slug=slug)


def get_run_or_404(user: Any, pk: Any) -> Run:
    return get_visible_or_404(visible_runs(user).select_related("experiment", "project"), pk=pk)


def get_finding_or_404(user: Any, pk: Any) -> Finding:
    return get_visible_or_404(visible_findings(user).select_related("project"), pk=pk)


def get_artifact_or_404(user: Any, pk: Any) -> Artifact:
    return get_visible_or_404(visible_artifacts(user).select_related("run", "project"), pk=pk)


# --- actions a user may take --------------------------------------------------------------------


def can_submit_run(user: Any, project: Project) -> bool:
    return is_member(user, project)


def can_manage_run(user: Any, run: Run) -> bool:
    """Cancel / rerun / record a finding from it: any member of the run's project."""
    return is_member(user, run.project)


def can_edit_finding(user: Any, finding: Finding) -> bool:
    return is_member(user, finding.project) and not finding.is_retracted

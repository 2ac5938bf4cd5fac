"""Lab administration pages: projects and their teams, and who manages a project's releases.

Thin, like every view: the policy says who may see a page (others get 404, as for a missing
project), a form parses, one ``check_*`` action validates and makes the audited change.

- ``/lab/``: lab admins list every project (team size, delegates) and create one.
- ``/projects/<slug>/team/``: lab admins and the project's delegates add and remove members;
  lab admins also delegate or revoke the project's release management.
"""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Count
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from disclosure import policy
from disclosure.actions.delegation import (
    check_delegate_release_management,
    check_revoke_release_delegation,
)
from experiments.actions.projects import (
    check_add_project_member,
    check_create_project,
    check_remove_project_member,
)
from experiments.models import Project


class ProjectForm(forms.Form):
    slug = forms.CharField(
        max_length=64,
        help_text="Lowercase letters, digits and hyphens; it appears in URLs and cannot change.",
    )
    name = forms.CharField(max_length=200)
    description = forms.CharField(required=False, max_length=5000, widget=forms.Textarea)


TEAM_OPS = {
    "add": ("Add to the team", check_add_project_member, "{user} joined the team."),
    "remove": ("Remove from the team", check_remove_project_member, "{user} left the team."),
    "delegate": (
        "Delegate release management",
        check_delegate_release_management,
        "{user} now manages this project's releases (a second factor is required of them).",
    ),
    "undelegate": (
        "Revoke release management",
        check_revoke_release_delegation,
        "{user} no longer manages this project's releases.",
    ),
}
ADMIN_ONLY_OPS = {"delegate", "undelegate"}


class TeamForm(forms.Form):
    op = forms.ChoiceField(choices=[(k, v[0]) for k, v in TEAM_OPS.items()])
    username = forms.CharField(max_length=150)


@login_required
@require_http_methods(["GET", "POST"])
def lab(request: HttpRequest) -> HttpResponse:
    if not policy.can_administer_lab(request.user):
        raise Http404("Not found.")
    form = ProjectForm(request.POST or None)
    if form.is_bound and form.is_valid():
        try:
            project = check_create_project(**form.cleaned_data, acting_user=request.user)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, f"Project {project.slug} created. Add its team below.")
            return redirect("project-team", slug=project.slug)
    projects = (
        Project.objects.annotate(n_members=Count("group__user", distinct=True))
        .order_by("slug")
        .only("slug", "name", "created_at")
    )
    return render(request, "web/lab.html", {"form": form, "projects": projects})


@login_required
@require_http_methods(["GET", "POST"])
def project_team(request: HttpRequest, slug: str) -> HttpResponse:
    project = policy.get_team_managed_project_or_404(request.user, slug)
    is_admin = policy.can_administer_lab(request.user)
    form = TeamForm(request.POST or None)
    if form.is_bound and form.is_valid():
        op = form.cleaned_data["op"]
        if op in ADMIN_ONLY_OPS and not is_admin:
            raise Http404("Not found.")
        _, check, done = TEAM_OPS[op]
        try:
            user = check(project, form.cleaned_data["username"], acting_user=request.user)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, done.format(user=user.get_username()))
            if not policy.can_manage_team(request.user, project):  # they removed themselves
                return redirect(reverse("home"))
            return redirect("project-team", slug=project.slug)
    context = {
        "project": project,
        "members": project.group.user_set.filter(is_active=True).order_by("username"),
        "delegates": policy.project_delegates(project),
        "is_admin": is_admin,
        "form": form,
    }
    return render(request, "web/project_team.html", context)

"""Delegated release management: a lab admin lets one person manage one project's releases,
grants and objections (guardian's direct-FK ``experiments.change_project``), and manage its team.

The guardian rows are audited by :mod:`disclosure.receivers` (``project.delegate`` /
``project.undelegate``, with the actor set here), so a change made in the admin is recorded too.
Delegates must pass a second factor from their next request on
(:func:`disclosure.policy.requires_second_factor`).
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from guardian.shortcuts import assign_perm, remove_perm

from disclosure import policy
from experiments.actions.projects import find_user
from experiments.models import Project
from experiments.signals import acting_as
from experiments.users import ActingUser, User

PERMISSION = "experiments.change_project"


def is_delegate(project: Project, user: User) -> bool:
    return policy.project_delegates(project).filter(pk=user.pk).exists()


def do_delegate_release_management(
    project: Project, user: User, *, acting_user: ActingUser
) -> None:
    with transaction.atomic(), acting_as(acting_user, "action"):
        assign_perm(PERMISSION, user, project)


def do_revoke_release_delegation(project: Project, user: User, *, acting_user: ActingUser) -> None:
    with transaction.atomic(), acting_as(acting_user, "action"):
        remove_perm(PERMISSION, user, project)


def check_delegate_release_management(
    project: Project, username: str, *, acting_user: ActingUser
) -> User:
    user = find_user(username)
    if is_delegate(project, user):
        raise ValidationError({"username": f"{user.username} already manages {project.slug}"})
    do_delegate_release_management(project, user, acting_user=acting_user)
    return user


def check_revoke_release_delegation(
    project: Project, username: str, *, acting_user: ActingUser
) -> User:
    user = find_user(username)
    if not is_delegate(project, user):
        raise ValidationError({"username": f"{user.username} does not manage {project.slug}"})
    do_revoke_release_delegation(project, user, acting_user=acting_user)
    return user

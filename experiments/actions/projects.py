"""Projects and their teams.

``check_*`` validate what a person typed (a form, the API, a command) and raise
:class:`ValidationError` naming the field; ``do_*`` make the change. Membership changes are
audited by :mod:`disclosure.receivers` (one entry per user and group, with the actor set here).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.db import transaction

from experiments.models import (
    Project,
)
from experiments.signals import acting_as, announce
from experiments.users import ActingUser, User

log = logging.getLogger(__name__)


def do_create_project(
    *,
    slug: str,
    name: str,
    description: str = "",
    members: Iterable[User] = (),
    acting_user: ActingUser,
) -> Project:
    with transaction.atomic():
        group = Group.objects.create(name=f"project:{slug}")
        project = Project.objects.create(slug=slug, name=name, description=description, group=group)
        announce(acting_user, "project.create", project, new={"slug": slug, "name": name})
        with acting_as(acting_user, "action"):
            group.user_set.add(*members)
    return project


def do_add_project_member(project: Project, user: User, *, acting_user: ActingUser) -> None:
    with transaction.atomic(), acting_as(acting_user, "action"):
        project.group.user_set.add(user)


def do_remove_project_member(project: Project, user: User, *, acting_user: ActingUser) -> None:
    with transaction.atomic(), acting_as(acting_user, "action"):
        project.group.user_set.remove(user)


SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


def check_create_project(
    *, slug: str, name: str, description: str = "", acting_user: ActingUser
) -> Project:
    """Create a project with an empty team, or raise naming what is wrong."""
    slug, name = slug.strip(), " ".join(name.split())
    errors: dict[str, str] = {}
    if not SLUG_RE.match(slug):
        errors["slug"] = (
            "use 1-64 lowercase letters, digits and hyphens, starting and ending with a letter "
            "or digit (it appears in URLs)"
        )
    elif (
        Project.objects.filter(slug=slug).exists()
        or Group.objects.filter(name=f"project:{slug}").exists()
    ):
        errors["slug"] = f"a project called {slug!r} already exists"
    if not name:
        errors["name"] = "give the project a name"
    elif len(name) > 200:
        errors["name"] = "a name has at most 200 characters"
    if len(description) > 5000:
        errors["description"] = "a description has at most 5,000 characters"
    if errors:
        raise ValidationError(errors)
    return do_create_project(
        slug=slug, name=name, description=description.strip(), acting_user=acting_user
    )


def find_user(username: str, *, field: str = "username") -> User:
    """The active account called ``username``, or a ValidationError on ``field``."""
    user = get_user_model().objects.filter(username=username.strip(), is_active=True).first()
    if user is None:
        raise ValidationError({field: f"no active account is called {username.strip()!r}"})
    return user


def check_add_project_member(project: Project, username: str, *, acting_user: ActingUser) -> User:
    user = find_user(username)
    if project.group.user_set.filter(pk=user.pk).exists():
        raise ValidationError({"username": f"{user.username} is already on the team"})
    do_add_project_member(project, user, acting_user=acting_user)
    return user


def check_remove_project_member(
    project: Project, username: str, *, acting_user: ActingUser
) -> User:
    user = find_user(username)
    if not project.group.user_set.filter(pk=user.pk).exists():
        raise ValidationError({"username": f"{user.username} is not on the team"})
    do_remove_project_member(project, user, acting_user=acting_user)
    return user

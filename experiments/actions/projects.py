"""Projects and their teams."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.contrib.auth.models import Group
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

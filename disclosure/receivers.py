"""Audit entries for changes that do not pass through an action: group membership (which gives
a project's runs and findings, or a role), guardian object permissions (which delegate a
project's release management). They are observed as ORM signals, so a change made in the admin,
a shell or the API is recorded just like one made by an action; the actor is the current one
(:func:`experiments.signals.current_actor`), with the route it came by.

Failed logins (Django's ``user_login_failed``) and lockouts (django-axes' ``user_locked_out``)
are recorded here too, with no actor: nobody is signed in yet.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save

from disclosure import audit
from disclosure.models import ProjectGroupObjectPermission, ProjectUserObjectPermission
from experiments.models import Project
from experiments.signals import current_actor
from experiments.users import User

_BEFORE = "_h3lab_members_before"


def _related_ids(instance: Any, reverse: bool) -> set[int]:
    related = instance.user_set if reverse else instance.groups
    return set(related.values_list("pk", flat=True))


def membership_changed(
    sender: Any, instance: Any, action: str, reverse: bool, pk_set: set[int] | None, **kw: Any
) -> None:
    """``User.groups`` / ``Group.user_set`` changed: one entry per (user, group) pair.

    ``post_remove`` and ``post_clear`` are told which rows *were asked* to go (or nothing, for
    a clear), so the members are captured in ``pre_remove`` / ``pre_clear``, before the rows
    are deleted; ``post_add`` is told only the rows actually added."""
    if action in ("pre_remove", "pre_clear"):
        before = _related_ids(instance, reverse)
        setattr(instance, _BEFORE, before & pk_set if pk_set is not None else before)
        return
    if action == "post_add":
        ids = set(pk_set or ())
    elif action in ("post_remove", "post_clear"):
        ids = instance.__dict__.pop(_BEFORE, set())
    else:
        return
    if not ids:
        return
    if reverse:  # group.user_set.add(users…)
        pairs = [(u, instance) for u in User.objects.filter(pk__in=ids).order_by("pk")]
    else:  # user.groups.add(groups…)
        pairs = [(instance, g) for g in Group.objects.filter(pk__in=ids).order_by("pk")]
    added = action == "post_add"
    for user, group in pairs:
        _record_membership(user, group, added=added)


def _record_membership(user: User, group: Group, *, added: bool) -> None:
    actor = current_actor()
    verb = "add_member" if added else "remove_member"
    project = Project.objects.filter(group=group).first()
    change = {"user": user.get_username(), "group": group.name, "via": actor.via}
    audit.record(
        actor.user,
        f"project.{verb}" if project else f"group.{verb}",
        project or group,
        old=None if added else change,
        new=change if added else None,
    )


def object_permission_saved(sender: Any, instance: Any, created: bool, **kw: Any) -> None:
    if created:
        _record_object_permission(instance, added=True)


def object_permission_deleted(sender: Any, instance: Any, **kw: Any) -> None:
    _record_object_permission(instance, added=False)


def _record_object_permission(row: Any, *, added: bool) -> None:
    """guardian rows on a project: ``change_project`` delegates its release management."""
    actor = current_actor()
    codename = row.permission.codename
    holder = row.user if hasattr(row, "user_id") else row.group
    project = Project.objects.filter(pk=row.content_object_id).first()
    kind = "delegate" if codename == "change_project" else "object_permission"
    change = {
        "user" if hasattr(row, "user_id") else "group": str(holder),
        "permission": codename,
        "via": actor.via,
    }
    audit.record(
        actor.user,
        f"project.{kind}" if added else f"project.un{kind}",
        project,
        old=None if added else change,
        new=change if added else None,
    )


def login_failed(sender: Any, credentials: dict[str, Any], request: Any = None, **kw: Any) -> None:
    """Django's ``user_login_failed``: a wrong password, an unknown username, or a try while
    locked out. The username is recorded as typed; no user row is looked up."""
    audit.record(
        None,
        "account.login_failed",
        new={"username": str(credentials.get("username", ""))[:150]},
        ip=audit.client_ip(request),
    )


def locked_out(
    sender: Any, request: Any, username: str | None, ip_address: str | None, **kw: Any
) -> None:
    """django-axes' ``user_locked_out``: too many failures for this username from this address."""
    audit.record(
        None,
        "account.locked_out",
        new={"username": str(username or "")[:150]},
        ip=ip_address or audit.client_ip(request),
    )


def connect() -> None:
    from axes.signals import user_locked_out
    from django.contrib.auth.signals import user_login_failed

    user_login_failed.connect(login_failed, dispatch_uid="disclosure.login_failed")
    user_locked_out.connect(locked_out, dispatch_uid="disclosure.locked_out")
    through = User.groups.through
    m2m_changed.connect(membership_changed, sender=through, dispatch_uid="disclosure.membership")
    for model in (ProjectUserObjectPermission, ProjectGroupObjectPermission):
        uid = f"disclosure.{model.__name__}"
        post_save.connect(object_permission_saved, sender=model, dispatch_uid=uid + ".save")
        post_delete.connect(object_permission_deleted, sender=model, dispatch_uid=uid + ".delete")
    _connect_roles_memo()


def _forget_roles(sender: Any, **kw: Any) -> None:
    """A membership, object permission, recusal or notification changed: the roles memoized for
    this request (:func:`disclosure.policy.roles`, with the unread count) are stale."""
    from disclosure.policy import forget_roles

    forget_roles()


def _connect_roles_memo() -> None:
    from disclosure.models import Notification, Recusal

    m2m_changed.connect(_forget_roles, sender=User.groups.through, dispatch_uid="roles.groups")
    for model in (
        ProjectUserObjectPermission,
        ProjectGroupObjectPermission,
        Recusal,
        Project,
        Notification,
    ):
        uid = f"roles.{model.__name__}"
        post_save.connect(_forget_roles, sender=model, dispatch_uid=uid + ".save")
        post_delete.connect(_forget_roles, sender=model, dispatch_uid=uid + ".delete")

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

if TYPE_CHECKING:
    from experiments.users import ActingUser


class DisclosureConfig(AppConfig):
    name = "disclosure"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from disclosure import receivers
        from experiments.signals import governed_change

        governed_change.connect(_audit_governed_change, dispatch_uid="disclosure.audit")
        receivers.connect()
        post_migrate.connect(_reseed_after_flush, sender=self, dispatch_uid="disclosure.reseed")


def _reseed_after_flush(sender: Any, *, using: str = "default", **kw: Any) -> None:
    """After ``flush`` (which sends ``post_migrate`` without ``apps``; ``migrate`` sends it
    with), put back what the migrations seed — the role groups and release policy v1 — so a
    flushed database is a working lab as a migrated one is, not one where no release can
    ever pass its gates. Idempotent; a database that has a release policy is left alone."""
    if "apps" in kw:
        return
    import importlib

    from django.apps import apps

    from disclosure.models import ReleasePolicy

    if ReleasePolicy.objects.using(using).exists():
        return
    importlib.import_module("disclosure.migrations.0003_roles_and_policy_v1").forward(apps, None)


def _audit_governed_change(
    sender: Any,
    *,
    actor: ActingUser,
    action: str,
    obj: Any,
    old: Any = None,
    new: Any = None,
    **kw: Any,
) -> None:
    """Every governed change of the experiments app (and downloads, announced by the download
    view as ``artifact.download``) goes into the audit log, inside the sender's transaction."""
    from disclosure import audit

    audit.record(actor, action, obj, old=old, new=new, ip=kw.get("ip"))

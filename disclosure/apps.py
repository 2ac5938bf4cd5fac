from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.apps import AppConfig

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

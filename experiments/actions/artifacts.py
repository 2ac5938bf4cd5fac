"""Artifacts: the audited record of a download."""

from __future__ import annotations

import logging

from experiments.models import (
    Artifact,
)
from experiments.signals import announce, is_user
from experiments.users import ActingUser

log = logging.getLogger(__name__)


def do_record_artifact_download(artifact: Artifact, acting_user: ActingUser) -> None:
    """Announce that ``acting_user`` (None or anonymous for the public) fetched an artifact's
    bytes, so the audit log records who downloaded what. Changes no row itself."""
    actor = acting_user if is_user(acting_user) else None
    announce(actor, "artifact.download", artifact, new={"sha256": artifact.sha256})

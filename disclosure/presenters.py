"""What a finding page shows of its evidence, decided through :mod:`disclosure.policy`."""

from __future__ import annotations

from typing import Any

from disclosure import policy
from experiments.models import Artifact, ArtifactKind, Finding, MetricSnapshot
from experiments.users import Viewer


def evidence_context(user: Viewer, finding: Finding) -> dict[str, Any]:
    """The runs a finding cites with the metric values frozen when it was recorded, and its
    evidence files; plots are shown inline. Whoever may read the finding may read its
    evidence (``policy.visible_artifacts``); only the team may open the run pages.

    Queries: cited runs, snapshots, artifacts (3, whatever the size); which runs the user may
    open comes from the roles already read for the request.
    """
    runs = list(finding.runs.order_by("pk").defer("config", "result", "traceback"))
    openable = policy.openable_run_ids(user, runs)
    snapshots: dict[int, list[MetricSnapshot]] = {}
    for snap in MetricSnapshot.objects.filter(finding=finding).order_by("run_id", "name"):
        snapshots.setdefault(snap.run_id, []).append(snap)
    artifacts: list[Artifact] = list(
        policy.visible_artifacts(user).filter(findings=finding).order_by("run_id", "name")
    )
    return {
        "runs": [
            {"run": r, "openable": r.pk in openable, "snapshots": snapshots.get(r.pk, [])}
            for r in runs
        ],
        "artifacts": artifacts,
        "plots": [
            a
            for a in artifacts
            if a.shredded_at is None
            and (a.kind == ArtifactKind.PLOT or a.content_type in ("image/png", "image/svg+xml"))
        ],
    }

"""What a finding page shows of its evidence, decided through :mod:`disclosure.policy`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from disclosure import policy
from experiments.models import Artifact, ArtifactKind, Finding, MetricSnapshot
from experiments.users import Viewer


def evidence_context(
    user: Viewer, finding: Finding, *, snapshots: Iterable[MetricSnapshot] | None = None
) -> dict[str, Any]:
    """The runs a finding cites with the metric values frozen when it was recorded, and its
    evidence files; plots are shown inline. Whoever may read the finding may read its
    evidence (``policy.visible_artifacts``); only the team may open the run pages.

    Queries: cited runs, snapshots (unless the caller read them, e.g. with the page's other
    lists), artifacts (3 or 2, whatever the size); which runs the user may open comes from the
    roles already read for the request.
    """
    runs = list(finding.runs.order_by("pk").defer("config", "result", "traceback"))
    openable = policy.openable_run_ids(user, runs)
    if snapshots is None:
        snapshots = MetricSnapshot.objects.filter(finding=finding).order_by("run_id", "name")
    by_run: dict[int, list[MetricSnapshot]] = {}
    for snap in snapshots:
        by_run.setdefault(snap.run_id, []).append(snap)
    artifacts: list[Artifact] = list(
        policy.visible_artifacts(user).filter(findings=finding).order_by("run_id", "name")
    )
    return {
        "runs": [
            {"run": r, "openable": r.pk in openable, "snapshots": by_run.get(r.pk, [])}
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

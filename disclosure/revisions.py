"""Read-only helpers for finding revisions: the line diff reviewers read, and what the finding
page shows of a finding's revisions to one viewer (always through :mod:`disclosure.policy`)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from disclosure import policy
from experiments.models import Finding, FindingRevision, RevisionState
from experiments.users import Viewer


@dataclass(frozen=True)
class DiffLine:
    op: str  # "equal", "insert" or "delete"
    text: str


def line_diff(old: str, new: str) -> list[DiffLine]:
    """``old`` → ``new`` line by line (what a reviewer reads before approving a revision)."""
    a, b = old.splitlines(), new.splitlines()
    lines: list[DiffLine] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            lines += [DiffLine("equal", t) for t in a[i1:i2]]
            continue
        lines += [DiffLine("delete", t) for t in a[i1:i2]]
        lines += [DiffLine("insert", t) for t in b[j1:j2]]
    return lines


def revisions_context(user: Viewer, finding: Finding) -> dict[str, Any]:
    """The revision history ``user`` is cleared for and, for those who see the review, the
    pending revision with its diff against what readers see now."""
    history = policy.visible_revisions(user, finding)
    pending = next((r for r in history if r.state == RevisionState.PENDING), None)
    diff = None
    if pending is not None:
        diff = {
            "title": line_diff(finding.title, pending.title),
            "body": line_diff(finding.body, pending.body),
            "evidence_changed": _evidence(pending) != _current_evidence(finding),
        }
    return {
        "history": [r for r in history if r.state == RevisionState.APPROVED],
        "pending": pending,
        "diff": diff,
        "can_revise": policy.can_revise_finding(user, finding),
    }


def _evidence(revision: FindingRevision) -> tuple[list[int], list[int], list[int]]:
    return (revision.run_ids, revision.artifact_ids, revision.dependency_ids)


def _current_evidence(finding: Finding) -> tuple[list[int], list[int], list[int]]:
    return (
        sorted(finding.runs.values_list("pk", flat=True)),
        sorted(finding.artifacts.values_list("pk", flat=True)),
        sorted(finding.depends_on.values_list("pk", flat=True)),
    )

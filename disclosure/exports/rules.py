"""What may leave: the blockers that stop a finding going into a bundle. Read-only.

A blocker set maps a label (one per finding, or ``"recipient"``, ``"selection"``, ``"project
…"``) to every reason it may not leave; empty means all may. The request
(:func:`disclosure.actions.exports.check_request_export`) refuses with all of them, and the
build (:func:`disclosure.exports.build.build_export`) re-checks them, since a grant may be
revoked or a finding retracted while the export waits in the queue.

SECURITY: a publication bundle carries public findings with a recorded release decision to
the public tier; a partner copy carries exactly the partner-tier findings the recipient's own
grant covers (:func:`disclosure.policy.partner_copy_findings`), each with a recorded release
decision to the partners tier.
"""

from __future__ import annotations

from collections.abc import Iterable

from disclosure import policy
from disclosure.models import AgreementAcceptance, AgreementVersion, ReleaseDecision
from experiments.models import Finding, Tier
from experiments.users import User


class ExportRefused(Exception):
    """Raised with every blocker: ``{label: [reason, …]}`` (a label per finding, or
    ``"recipient"``)."""

    def __init__(self, blockers: dict[str, list[str]]) -> None:
        self.blockers = blockers
        super().__init__(describe_blockers(blockers))


def describe_blockers(blockers: dict[str, list[str]]) -> str:
    return "Export refused:\n" + "\n".join(
        f"- {label}: {'; '.join(reasons)}" for label, reasons in blockers.items()
    )


def finding_label(f: Finding) -> str:
    """How a blocker names a finding."""
    return f"finding #{f.pk} “{f.title}”"


def public_blockers(findings: Iterable[Finding]) -> dict[str, list[str]]:
    """Why each finding may not go into a publication bundle (empty: all may)."""
    findings = list(findings)
    decided = set(
        ReleaseDecision.objects.filter(finding__in=findings, to_tier=Tier.PUBLIC).values_list(
            "finding_id", flat=True
        )
    )
    blockers: dict[str, list[str]] = {}
    for f in findings:
        reasons = []
        if f.is_retracted:
            reasons.append("retracted")
        if f.tier != Tier.PUBLIC:
            reasons.append(f"at the {Tier(f.tier).label} tier, not public")
        if f.pk not in decided:
            reasons.append("no recorded release decision to the public tier")
        if reasons:
            blockers[finding_label(f)] = reasons
    return blockers


def partner_blockers(recipient: User | None, findings: Iterable[Finding]) -> dict[str, list[str]]:
    """Why each finding may not go into ``recipient``'s partner copy (empty: all may)."""
    findings = list(findings)
    blockers: dict[str, list[str]] = {}
    current = AgreementVersion.objects.current()
    if recipient is None or not recipient.is_active:
        return {"recipient": ["no active recipient"]}
    if current is None:
        blockers["recipient"] = ["no collaborator agreement is in force"]
    elif not AgreementAcceptance.objects.filter(user=recipient, agreement=current).exists():
        blockers["recipient"] = [
            f"{recipient.get_username()} has not accepted the current agreement v{current.version}"
        ]
    allowed = set(
        policy.partner_copy_findings(recipient)
        .filter(pk__in=[f.pk for f in findings])
        .values_list("pk", flat=True)
    )
    decided = set(
        ReleaseDecision.objects.filter(finding__in=findings, to_tier=Tier.PARTNERS).values_list(
            "finding_id", flat=True
        )
    )
    for f in findings:
        reasons = []
        if f.is_retracted:
            reasons.append("retracted")
        if f.tier != Tier.PARTNERS:
            reasons.append(
                f"at the {Tier(f.tier).label} tier (a partner copy carries partner-tier findings)"
            )
        elif f.pk not in allowed and "recipient" not in blockers:
            reasons.append(f"not covered by an active grant of {recipient.get_username()}")
        if f.pk not in decided:
            reasons.append("no recorded release decision to the partners tier")
        if reasons:
            blockers[finding_label(f)] = reasons
    if not findings and not blockers:
        blockers["recipient"] = [
            f"no partner-tier finding is granted to {recipient.get_username()}"
        ]
    return blockers

"""Template helpers for the disclosure pages and the nav links."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.utils.html import format_html

from disclosure import notifications, policy

register = template.Library()


TIER_PLAIN = {
    0: "Team only",
    1: "Shared with reviewers",
    2: "Shared with partners",
    3: "Public",
}


@register.simple_tag(takes_context=True)
def disclosure_nav(context: dict[str, Any]) -> dict[str, Any]:
    """Which disclosure links the signed-in user gets (three small queries per page)."""
    user = context["request"].user if "request" in context else None
    if user is None or not user.is_authenticated:
        return {}
    return {
        "reviewer": policy.is_reviewer(user),
        "release_manager": policy.is_release_manager(user),
        "lab_admin": policy.can_administer_lab(user),
        "unread": notifications.unread_count(user),
    }


@register.filter
def utc_time(value: datetime | None) -> str:
    """An instant, stored in UTC, shown in UTC and turned into the viewer's local time by the
    script in ``disclosure/_nav.html``."""
    if value is None:
        return "—"
    return format_html(
        '<time datetime="{}" data-local>{} UTC</time>',
        value.isoformat(),
        value.strftime("%Y-%m-%d %H:%M"),
    )


@register.simple_tag
def tier_badge(tier: int, label: str = "") -> str:
    """A tier's badge in plain words ("Shared with reviewers"), its name in the tooltip. A
    simple tag, not an included template: lists render one per row, and an inclusion tag costs
    a template render each time."""
    from experiments.models import Tier

    return format_html(
        '<span class="tier tier-{}" title="{} tier">{}</span>',
        tier,
        Tier(tier).label,
        label or TIER_PLAIN[Tier(tier)],
    )


# What an audit entry on a finding's timeline says, after the actor's name.
TIMELINE = {
    "finding.create": "recorded the finding",
    "finding.edit": "edited the finding",
    "finding.retract": "retracted the finding",
    "release.request": "asked to share it more widely",
    "release.schedule": "scheduled the release",
    "release.decide": "released it",
    "release.hold": "held the release back",
    "review.assess": "recorded a dual-use assessment",
    "review.approve": "approved the release",
    "review.object": "objected to the release",
    "review.recuse": "recused from reviewing it",
    "review.withdraw_objection": "withdrew an objection",
    "review.clear_objection_vote": "voted to clear an objection",
    "review.resolve_objection": "cleared an objection by quorum",
    "revision.request": "proposed a revision",
    "grant.give": "gave a collaborator access",
    "grant.approve": "approved a collaborator's access",
    "grant.decline": "declined a collaborator's access",
    "grant.revoke": "revoked a collaborator's access",
    "export.request": "asked for a publication bundle",
    "export.build": "built a publication bundle",
    "export.refuse": "refused a publication bundle",
    "export.download": "downloaded a publication bundle",
    "artifact.declassify": "released a piece of evidence",
}


@register.filter
def timeline_text(entry: Any) -> str:
    """An audit entry in words: "asked to share it more widely (to partners)"."""
    from experiments.models import Tier

    action = str(getattr(entry, "action", ""))
    text = TIMELINE.get(action) or action.replace("_", " ").replace(".", ": ", 1)
    new = getattr(entry, "new", None)
    to = new.get("to") if isinstance(new, dict) else None
    by_label = {t.label: t for t in Tier}
    if action.startswith("release.") and isinstance(to, str) and to in by_label:
        text += f" ({TIER_PLAIN[by_label[to]].lower()})"
    return text

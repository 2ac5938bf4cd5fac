"""Template helpers for the disclosure pages and the nav links."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import template
from django.utils.html import format_html

from disclosure import notifications, policy

register = template.Library()


@register.simple_tag(takes_context=True)
def disclosure_nav(context: dict[str, Any]) -> dict[str, Any]:
    """Which disclosure links the signed-in user gets (three small queries per page)."""
    user = context["request"].user if "request" in context else None
    if user is None or not user.is_authenticated:
        return {}
    return {
        "reviewer": policy.is_reviewer(user),
        "release_manager": policy.is_release_manager(user),
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
    """A tier's badge. A simple tag, not an included template: lists render one per row, and
    an inclusion tag costs a template render each time."""
    from experiments.models import Tier

    return format_html(
        '<span class="tier tier-{}" title="disclosure tier">{}</span>',
        tier,
        label or Tier(tier).label,
    )

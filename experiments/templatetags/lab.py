"""Small display filters for lab pages: durations, metric values, config values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from experiments.forms import TASK_CHOICES

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """``93.4`` → ``"1m 33s"``; empty for unknown."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m"


@register.filter
def metric(value: float | None, digits: int = 4) -> str:
    """A metric with ``digits`` significant figures; an em dash when absent."""
    if value is None:
        return "—"
    return f"{value:.{digits}g}"


@register.filter
def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


@register.filter
def cfg(value: Any) -> str:
    """A config value as a researcher would write it."""
    if value is None:
        return "—"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@register.filter
def task_label(name: str) -> str:
    """``induction_head`` → ``Induction head``; unknown names as they are."""
    return dict(TASK_CHOICES, jsonl="JSONL dataset", text="Text file").get(name, name)


@register.simple_tag
def status_badge(status: str) -> str:
    """A run's status badge (one per row of the run lists: a tag, not an included template)."""
    pulse = mark_safe('<span class="pulse" aria-hidden="true"></span>')  # a constant
    return format_html(
        '<span class="badge badge-{}">{}{}</span>',
        status,
        pulse if status == "running" else "",
        status,
    )


@register.filter
def utc_stamp(value: datetime | None) -> str:
    """``YYYY-MM-DD HH:MM:SS`` of a stored (UTC) instant: what ``|date:'Y-m-d H:i:s'`` prints
    with TIME_ZONE = "UTC", at a fraction of its cost (lists print one per row)."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")

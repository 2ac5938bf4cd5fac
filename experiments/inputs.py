"""Bounds on what a request may carry, shared by forms, serializers, paginators and views.

SECURITY: every number and string here reaches the database or the ML core. A value past
these bounds answers 400 (or 404 for an id) with a message, instead of overflowing a 64-bit
column, a seed or a page window and answering 500.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

# Primary keys are 64-bit signed (BigAutoField); ids outside 1..MAX_ID name no row.
MAX_ID = 2**63 - 1
# Seeds feed torch.Generator.manual_seed, which takes a 64-bit value.
MAX_SEED = 2**63 - 1
# Text a person writes: a finding's title and Markdown body, rationales, notes.
MAX_TITLE_CHARS = 300
MAX_BODY_CHARS = 50_000
MAX_RATIONALE_CHARS = 5_000
# Embargoes and grant expiries lie at most this far ahead.
MAX_FUTURE = timedelta(days=3653)


def parse_id(value: Any) -> int | None:
    """``value`` as a row id (decimal digits, 1..MAX_ID), or None for anything else."""
    text = str(value).strip()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        return None
    number = int(text)
    return number if 1 <= number <= MAX_ID else None


def too_far_ahead(when: datetime) -> bool:
    """Whether ``when`` lies beyond :data:`MAX_FUTURE` from now."""
    return when > timezone.now() + MAX_FUTURE


FUTURE_LIMIT_MESSAGE = f"must lie within {MAX_FUTURE.days // 365} years from now"

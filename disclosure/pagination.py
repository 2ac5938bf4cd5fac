"""A paginator whose count does not grow with the data.

An exact ``COUNT(*)`` reads every row the user can see, so at 50k findings it dominates the
finding list (~10 ms, linear in the data). :class:`CappedPaginator` counts at most ``cap`` rows
past the start of the requested page (``SELECT COUNT(*) FROM (… LIMIT n)``): exact below the cap,
"more than N" above it, and still one query.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet

if TYPE_CHECKING:
    _Paginator = Paginator[Any]
else:  # Django's Paginator is not subscriptable at runtime
    _Paginator = Paginator

from experiments.inputs import parse_id

# Past this page the count window stops growing: far beyond any real list, far below 2**63 rows.
MAX_PAGE = 1_000_000


class CappedPaginator(_Paginator):
    """Pages over a queryset with a count that stops after ``cap`` rows.

    The window slides with the requested page (``max(cap, page × per_page)`` rows), so a reader
    can always step to the next page: past the cap, ``count`` is the window plus one, which is
    enough to know another page exists. ``is_capped`` says whether the count is exact.
    """

    def __init__(self, object_list: QuerySet[Any], per_page: int, *, cap: int = 1000) -> None:
        super().__init__(object_list, per_page)
        self.queryset = object_list
        self.cap = cap
        self.window = cap

    def get_page(self, number: Any) -> Page[Any]:
        # SECURITY: the window becomes a SQL LIMIT; an unbounded page number (``?page=10**23``)
        # would overflow the database's 64-bit integer and answer 500. Numbers past
        # MAX_PAGE, and anything that is not a whole number, are treated like Django's
        # Paginator treats them: the last page, or the first.
        requested = parse_id(number)
        if requested is None or requested > MAX_PAGE:
            requested = MAX_PAGE if str(number).strip().isdigit() else 1
            number = requested
        self.window = max(self.cap, requested * self.per_page)
        return super().get_page(number)

    @cached_property
    def count(self) -> int:
        """Rows, up to ``window + 1`` (ordering dropped: it does not change how many)."""
        return self.queryset.order_by()[: self.window + 1].count()

    @property
    def is_capped(self) -> bool:
        return self.count > self.window

    @property
    def count_label(self) -> str:
        """``"1,234"``, or ``"1,000+"`` when there are more rows than were counted."""
        return f"{self.window:,}+" if self.is_capped else f"{self.count:,}"

    @property
    def num_pages_label(self) -> str:
        """``"7"``, or ``"20+"`` when the count is capped."""
        if self.is_capped:
            return f"{self.window // self.per_page:,}+"
        return f"{self.num_pages:,}"

    def page(self, number: Any) -> Page[Any]:
        page = super().page(number)
        if self.is_capped:
            # Paginator trims the last page to ``count``; past the cap that row is only the
            # marker that more exist, so show the full page.
            bottom = (page.number - 1) * self.per_page
            page.object_list = self.queryset[bottom : bottom + self.per_page]
        return page

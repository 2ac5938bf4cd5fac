"""Markdown → sanitized HTML for finding bodies.

SECURITY: finding bodies are user input shown to other users (reviewers, partners, the
public). Markdown allows raw HTML, so the rendered output is passed through nh3 (Ammonia)
with an allow-list; scripts, event handlers, iframes and javascript: URLs never survive.
"""

from __future__ import annotations

import markdown as md
import nh3
from django.utils.safestring import SafeString, mark_safe

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "code",
    "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
    "img", "sup", "sub", "del", "span",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "th": {"align"},
                      "td": {"align"}, "code": {"class"}, "span": {"class"}}  # fmt: skip


def render_markdown(text: str) -> SafeString:
    html = md.markdown(text, extensions=["fenced_code", "tables", "sane_lists"])
    clean = nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(clean)  # noqa: S308 -- sanitized by nh3 just above

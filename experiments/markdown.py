"""Markdown → sanitized HTML for finding bodies.

SECURITY: finding bodies are user input shown to other users (reviewers, partners, the
public). Markdown allows raw HTML, so the rendered output is passed through nh3 (Ammonia)
with an allow-list; scripts, event handlers, iframes and javascript: URLs never survive.

Images load only from the lab itself (a relative URL or ``H3LAB_SITE_URL``'s origin): an image
from anywhere else would tell its host who read the finding and when (a tracking pixel, and
the page's CSP would block it anyway). Such an image becomes a plain link to its URL.
"""

from __future__ import annotations

import html
import re
from urllib.parse import urlsplit

import markdown as md
import nh3
from django.conf import settings
from django.utils.safestring import SafeString, mark_safe

ALLOWED_TAGS = {
    "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "code",
    "pre", "blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td",
    "img", "sup", "sub", "del", "span",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "th": {"align"},
                      "td": {"align"}, "code": {"class"}, "span": {"class"}}  # fmt: skip


def render_markdown(text: str) -> SafeString:
    rendered = md.markdown(text, extensions=["fenced_code", "tables", "sane_lists"])
    clean = nh3.clean(
        rendered,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
    return mark_safe(_IMG.sub(_own_images_only, clean))  # noqa: S308 -- sanitized by nh3 just above


# nh3 serializes every tag it keeps the same way: lower-case names, double-quoted attribute
# values with ``"`` and ``&`` escaped. So an <img> in its output matches this, and an
# attribute value is everything up to the next double quote (``>`` may occur inside one).
_IMG = re.compile(r'<img\b(?:[^>"]|"[^"]*")*>')
_ATTR = {name: re.compile(rf'\s{name}="([^"]*)"') for name in ("src", "alt")}


def is_own_url(url: str) -> bool:
    """Whether ``url`` points into the lab: relative (no scheme, no host), or absolute on
    ``H3LAB_SITE_URL``'s scheme and host."""
    text = url.strip()
    if "\\" in text or any(ord(c) < 0x20 for c in text):
        return False  # browsers read "/\\host" as "//host"
    parts = urlsplit(text)
    if not parts.scheme and not parts.netloc:
        return not text.startswith("//")
    site = urlsplit(settings.H3LAB_SITE_URL)
    return (parts.scheme.lower(), parts.netloc.lower()) == (
        site.scheme.lower(),
        site.netloc.lower(),
    )


def _own_images_only(match: re.Match[str]) -> str:
    tag = match.group(0)
    src, alt = (_ATTR[name].search(tag) for name in ("src", "alt"))
    if src is None:
        return tag  # nothing to load
    if is_own_url(html.unescape(src.group(1))):
        return tag
    # Both values are still escaped as nh3 wrote them, so they go back into HTML as they are.
    label = alt.group(1) if alt is not None and alt.group(1).strip() else src.group(1)
    return f'<a href="{src.group(1)}" rel="noopener noreferrer nofollow">{label}</a>'

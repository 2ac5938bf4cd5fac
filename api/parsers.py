"""The API's JSON parser: nesting depth bounded before parsing, NUL characters refused.

SECURITY: Python's ``json`` decoder recurses once per ``[`` or ``{``; a body nested a few
thousand deep raises RecursionError (a 500), and the same value would recurse again in every
serializer and in ``JSONField`` storage. The depth is counted on the raw bytes first, in
one linear pass that skips string contents, so a deep body is refused before anything
recurses. A ``\\u0000`` inside a string would reach PostgreSQL, whose ``text`` and ``jsonb``
refuse it with an error; it is refused here with a 400 as well.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

# Far deeper than any run config or finding (a config nests 3 levels), far shallower than
# the interpreter's recursion limit.
MAX_JSON_DEPTH = 32


def nesting_depth(raw: bytes) -> int:
    """The deepest ``[``/``{`` nesting in the JSON text ``raw``, ignoring string contents."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _contains_nul(value: Any) -> bool:
    """Whether a parsed JSON value holds a NUL character in any key or string (its depth is
    already bounded, so the recursion is too)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, Mapping):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        if nesting_depth(raw) > MAX_JSON_DEPTH:
            raise ParseError(f"JSON parse error - nested too deeply (at most {MAX_JSON_DEPTH}).")
        data = super().parse(io.BytesIO(raw), media_type, parser_context)
        if _contains_nul(data):
            raise ParseError("JSON parse error - strings must not contain NUL characters.")
        return data

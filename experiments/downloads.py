"""Stored files sent to a browser or an API client: one responder, one set of headers, for
artifacts (page and API) and export bundles (page and API) alike.

Callers decide access (:mod:`disclosure.policy`), open the stored bytes and record the
download; this module only shapes the answer.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

from django.http import StreamingHttpResponse
from django.utils.cache import add_never_cache_headers
from django.utils.http import content_disposition_header

from experiments.models import Artifact

OCTET_STREAM = "application/octet-stream"
# Artifacts a page may show in place (the run page's plots), with their own content type.
INLINE_TYPES = ("image/png", "image/svg+xml")

# SECURITY: artifacts are produced by training code and may be crafted; an SVG opened directly
# would run its scripts on our origin. The sandbox gives every download an opaque origin with
# no script and nothing fetched; inline styles stay allowed so that an SVG plot shown in place
# still draws as a picture.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_UNSAFE_IN_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def stream_file(
    chunks: Iterable[bytes],
    *,
    filename: str,
    content_type: str,
    size: int,
    sha256: str,
    inline: bool = False,
) -> StreamingHttpResponse:
    """``chunks`` as a download: an attachment named ``filename`` (in place when ``inline``),
    never sniffed, sandboxed, never cached, with its SHA-256 both as ``Digest: sha-256=<base64>``
    (RFC 3230) and as ``X-Checksum-SHA256: <hex>`` (what the h3lab client checks)."""
    response = StreamingHttpResponse(chunks, content_type=content_type)
    response["Content-Length"] = str(size)
    response["Content-Disposition"] = content_disposition_header(
        not inline, _safe_filename(filename)
    ) or ("inline" if inline else "attachment")
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    if _SHA256_HEX.fullmatch(sha256):
        response["Digest"] = "sha-256=" + base64.b64encode(bytes.fromhex(sha256)).decode()
        response["X-Checksum-SHA256"] = sha256
    add_never_cache_headers(response)
    return response


def stream_artifact(
    artifact: Artifact, chunks: Iterable[bytes], *, inline: bool = False
) -> StreamingHttpResponse:
    """An artifact's bytes: in place only when asked for and one of :data:`INLINE_TYPES`,
    otherwise an attachment of bytes whatever type the training code recorded."""
    inline = inline and artifact.content_type in INLINE_TYPES
    return stream_file(
        chunks,
        filename=artifact.name,
        content_type=artifact.content_type if inline else OCTET_STREAM,
        size=artifact.size,
        sha256=artifact.sha256,
        inline=inline,
    )


def _safe_filename(name: str) -> str:
    """A name to suggest for saving: no folders, no control characters (the header encodes
    quotes and non-ASCII itself)."""
    return _UNSAFE_IN_NAME.sub("_", name).strip(". ") or "download"

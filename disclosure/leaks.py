"""Tracing a leaked partner copy (or an excerpt of one) back to its recipient.

Two kinds of evidence, strongest first: a metadata token (manifest, JSON field, PNG ``tEXt``
chunk, CSV comment line) names the copy exactly; otherwise the text's wording variants are
checked against every recorded recipient mark (:func:`disclosure.marks.trace`), with the
unmarked finding texts as originals so the lab's own wording is never attributed.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from disclosure import marks
from disclosure.marks import MARK_KEY, PNG_SIGNATURE, png_marks
from disclosure.models import RecipientMark
from experiments.models import Finding

_token = re.compile(MARK_KEY + r"""["']?\s*[:=]\s*["']?([0-9a-f]{24})\b""")


@dataclass(frozen=True)
class LeakTrace:
    mark: RecipientMark | None
    method: str
    detail: str

    def summary(self) -> str:
        if self.mark is None:
            return f"cannot attribute: {self.detail}"
        export = self.mark.export
        return (
            f"traced to {self.mark.recipient.get_username()}: partner copy export "
            f"#{export.pk} ({export.name}), made {export.created_at:%Y-%m-%d %H:%M} UTC; "
            f"evidence: {self.method}: {self.detail}"
        )


def _collect(data: bytes) -> tuple[list[str], list[str]]:
    """(metadata tokens, texts) found in a file's bytes: a bundle, a PNG, or text."""
    tokens: list[str] = []
    texts: list[str] = []
    if data[:2] == b"\x1f\x8b":
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for member in tar:
                    fh = tar.extractfile(member) if member.isfile() else None
                    if fh is not None:
                        t, x = _collect(fh.read(64 << 20))
                        tokens += t
                        texts += x
            return tokens, texts
        except (tarfile.TarError, OSError, EOFError):
            pass
    if data.startswith(PNG_SIGNATURE):
        return png_marks(data), []
    text = data.decode("utf-8", "replace")
    return _token.findall(text), [text]


def trace_bytes(data: bytes) -> LeakTrace:
    tokens, texts = _collect(data)
    for token in tokens:
        mark = RecipientMark.objects.select_related("recipient", "export").filter(token=token)
        found = mark.first()
        if found is not None:
            return LeakTrace(found, "metadata", f"{MARK_KEY} token {token}")
    return trace_text("\n\n".join(texts))


def trace_text(text: str) -> LeakTrace:
    recorded = {str(m.pk): m for m in RecipientMark.objects.select_related("recipient", "export")}
    candidates = [(pk, m.secret) for pk, m in recorded.items()]
    exported = Finding.objects.filter(exports__mark__isnull=False).distinct()
    originals = list(exported.values_list("body", flat=True))
    result = marks.trace(text, candidates, originals)
    if result.recipient is None:
        return LeakTrace(None, result.method, result.detail)
    return LeakTrace(recorded[result.recipient], result.method, result.detail)


def trace_leak(file_or_text: str) -> LeakTrace:
    path = Path(file_or_text)
    try:
        is_file = len(file_or_text) < 4096 and path.is_file()
    except OSError:
        is_file = False
    if is_file:
        return trace_bytes(path.read_bytes())
    return trace_text(file_or_text)

"""Recipient marks for partner copies, and tracing a leaked excerpt back to its recipient.

A partner copy's text is rewritten with per-recipient *wording variants*: at every place
where one of :data:`VARIANTS`' interchangeable phrasings occurs ("for example" / "for
instance", "shows" / "demonstrates", "do not" / "don't" …), the phrasing used is one bit of a
keyed hash of (recipient mark, the sentence's canonical text, the slot). The text reads
naturally and means the same; it survives copy-paste, re-typing, re-saving and reformatting,
because the evidence is the words themselves. A zero-width mark after the first word of each
paragraph adds a second, exact signal while the text is copied unchanged.

Tracing an excerpt recomputes, for every candidate recipient, the phrasing each slot *should*
have and counts agreements. Because the bit for a slot depends only on its own sentence, a few
sentences are enough; a recipient is named only when every observed slot agrees and there are
enough of them that a chance match is unlikely (2^-k for k slots).

Files other than prose carry the copy's *metadata token* (:func:`metadata_token`): a JSON
field, a PNG ``tEXt`` chunk or a CSV comment line named ``h3lab-mark`` (:func:`mark_png`,
:func:`mark_csv`, :func:`mark_json`). It names the copy exactly while the file is unchanged.

Pure Python: no Django import.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

# Interchangeable phrasings (lower case; capitalisation is preserved when applied).
VARIANTS: tuple[tuple[str, str], ...] = (
    # Only pairs where both forms are used solely in the interchangeable sense: replacing
    # one with the other must never change what a sentence claims.
    ("for example", "for instance"),
    ("in addition", "additionally"),
    ("moreover", "furthermore"),
    ("shows", "demonstrates"),
    ("shown", "demonstrated"),
    ("suggests", "indicates"),
    ("approximately", "roughly"),
    ("nearly", "almost"),
    ("we observe", "we see"),
    ("we observed", "we saw"),
    ("therefore", "thus"),
    ("however", "nevertheless"),
    ("often", "frequently"),
    ("quickly", "rapidly"),
    ("several", "a number of"),
    ("method", "approach"),
    ("methods", "approaches"),
    ("results", "outcomes"),
    ("begins", "starts"),
    ("do not", "don't"),
    ("does not", "doesn't"),
    ("did not", "didn't"),
    ("is not", "isn't"),
    ("are not", "aren't"),
    ("cannot", "can't"),
    ("it is", "it's"),
    ("that is", "that's"),
    ("we have", "we've"),
    ("entirely", "completely"),
    ("clearly", "plainly"),
    ("important", "notable"),
    ("in particular", "specifically"),
    ("typically", "usually"),
    ("perhaps", "possibly"),
    ("surprisingly", "unexpectedly"),
    ("appears", "seems"),
    ("appear", "seem"),
    ("precisely", "exactly"),
    ("rather than", "instead of"),
    ("similarly", "likewise"),
    ("finally", "lastly"),
    ("initially", "at first"),
    ("consequently", "as a result"),
    ("because of", "due to"),
    ("examine", "inspect"),
    ("mostly", "largely"),
)
ZW0, ZW1, ZW_END = "\u200b", "\u200c", "\u2060"
MIN_SLOTS = 6  # a chance match across 6 independent slots has probability 1/64

_lookup: dict[str, tuple[int, int]] = {}
for _slot, (_a, _b) in enumerate(VARIANTS):
    _lookup[_a] = (_slot, 0)
    _lookup[_b] = (_slot, 1)
_pattern = re.compile(
    r"\b(" + "|".join(re.escape(p) for p in sorted(_lookup, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
_sentence_end = re.compile(r"(?<=[.!?])\s+")
_zw = re.compile(f"[{ZW0}{ZW1}{ZW_END}]")


def _normalise(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", _zw.sub("", s).lower()).strip()


def _canonical(sentence: str) -> str:
    """The sentence with every variant replaced by its slot's first form, normalised."""
    return _normalise(_pattern.sub(lambda m: VARIANTS[_lookup[m.group(0).lower()][0]][0], sentence))


def _bit(mark: str, canonical: str, slot: int, occurrence: int) -> int:
    msg = f"{canonical}\x00{slot}\x00{occurrence}".encode()
    return hmac.new(mark.encode(), msg, hashlib.sha256).digest()[0] & 1


def _match_case(template: str, word: str) -> str:
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _sentences(text: str) -> list[str]:
    return [s for s in _sentence_end.split(text) if s.strip()]


def _mark_sentence(sentence: str, mark: str) -> str:
    canonical = _canonical(sentence)
    seen: dict[int, int] = {}

    def choose(m: re.Match[str]) -> str:
        slot, _ = _lookup[m.group(0).lower()]
        occurrence = seen.get(slot, 0)
        seen[slot] = occurrence + 1
        return _match_case(m.group(0), VARIANTS[slot][_bit(mark, canonical, slot, occurrence)])

    return _pattern.sub(choose, sentence)


def _zero_width(mark: str) -> str:
    digest = hashlib.sha256(mark.encode()).digest()[:4]
    bits = "".join(f"{b:08b}" for b in digest)
    return "".join(ZW1 if c == "1" else ZW0 for c in bits) + ZW_END


def mark_text(text: str, mark: str) -> str:
    """Rewrite ``text`` with the recipient mark ``mark`` (a secret per-recipient string).

    Code blocks and inline code are left untouched so that commands and identifiers stay
    exact."""
    out: list[str] = []
    for part in re.split(r"(```.*?```|`[^`\n]*`)", text, flags=re.S):
        if part.startswith("`"):
            out.append(part)
            continue
        out.append(_mark_prose(part, mark))
    return _add_zero_width("".join(out), mark)


def _mark_prose(prose: str, mark: str) -> str:
    # Split on sentence boundaries but keep the exact whitespace between sentences.
    chunks = re.split(r"((?<=[.!?])\s+)", prose)
    return "".join(c if not c.strip() else _mark_sentence(c, mark) for c in chunks)


def _add_zero_width(text: str, mark: str) -> str:
    zw = _zero_width(mark)

    def after_first_word(m: re.Match[str]) -> str:
        return m.group(1) + zw

    # After the first word of each paragraph (not inside code fences: they start with `).
    return re.sub(r"(?m)^([A-Za-z][\w'-]*)", after_first_word, text)


@dataclass(frozen=True)
class Trace:
    """Outcome of tracing: ``recipient`` is None when the excerpt cannot be attributed."""

    recipient: str | None
    slots: int
    agreeing: int
    method: str
    detail: str


def observe(excerpt: str) -> list[tuple[str, int, int, int]]:
    """The (canonical sentence, slot, occurrence, variant) observations in an excerpt."""
    obs: list[tuple[str, int, int, int]] = []
    for sentence in _sentences(excerpt):
        canonical = _canonical(sentence)
        if len(canonical.split()) < 4:  # fragments too short to key reliably
            continue
        seen: dict[int, int] = {}
        for m in _pattern.finditer(sentence):
            slot, variant = _lookup[m.group(0).lower()]
            occurrence = seen.get(slot, 0)
            seen[slot] = occurrence + 1
            obs.append((canonical, slot, occurrence, variant))
    return obs


def trace(
    excerpt: str, candidates: Iterable[tuple[str, str]], originals: Iterable[str] = ()
) -> Trace:
    """Attribute ``excerpt`` to one of ``candidates`` (pairs of recipient name and mark).

    ``originals`` are the unmarked source texts: an excerpt whose phrasing matches a source
    text at least as well as any recipient is the lab's own wording, not a partner copy."""
    candidates = list(candidates)
    source = {(c, s, o): v for text in originals for c, s, o, v in observe(text)}
    zw_found = re.findall(f"[{ZW0}{ZW1}]{{32}}{ZW_END}", excerpt)
    if zw_found:
        for name, mark in candidates:
            if _zero_width(mark) in zw_found:
                return Trace(name, 0, 0, "zero-width", "exact zero-width mark found in the text")
    obs = observe(excerpt)
    if not obs:
        return Trace(None, 0, 0, "wording", "the excerpt contains no marked phrasing")
    scores = []
    for name, mark in candidates:
        agree = sum(_bit(mark, c, s, o) == v for c, s, o, v in obs)
        scores.append((agree, name))
    scores.sort(reverse=True)
    if not scores:
        return Trace(None, len(obs), 0, "wording", "no recipient marks are recorded")
    best_agree, best = scores[0]
    runner_up = scores[1][0] if len(scores) > 1 else -1
    if source:
        original = sum(source.get((c, s, o)) == v for c, s, o, v in obs)
        if original >= best_agree:
            return Trace(
                None, len(obs), original, "wording", "the phrasing matches the unmarked original"
            )
    if best_agree == len(obs) and len(obs) >= MIN_SLOTS and runner_up < best_agree:
        return Trace(
            best, len(obs), best_agree, "wording",
            f"all {len(obs)} marked phrasings match (chance match ≈ 1 in {2 ** len(obs):,})",
        )  # fmt: skip
    return Trace(
        None, len(obs), best_agree, "wording",
        f"not enough evidence: {len(obs)} marked phrasing(s) found, best candidate matches "
        f"{best_agree}; at least {MIN_SLOTS} matching are needed",
    )  # fmt: skip


# --- metadata tokens in files ------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MARK_KEY = "h3lab-mark"


def metadata_token(secret: str) -> str:
    """The token written into a partner copy's file metadata (JSON field, PNG tEXt chunk, CSV
    comment). Derived from the secret, so it names the copy without revealing the secret."""
    return hmac.new(secret.encode(), b"h3lab-metadata-mark", hashlib.sha256).hexdigest()[:24]


def mark_png(data: bytes, token: str) -> bytes:
    """Insert a ``tEXt`` chunk (``h3lab-mark``) after IHDR; the image is unchanged."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return data
    (ihdr_len,) = struct.unpack(">I", data[8:12])
    end = 8 + 12 + ihdr_len
    body = b"tEXt" + MARK_KEY.encode() + b"\x00" + token.encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return data[:end] + chunk + data[end:]


def png_marks(data: bytes) -> list[str]:
    found, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"tEXt" and body.startswith(MARK_KEY.encode() + b"\x00"):
            found.append(body.split(b"\x00", 1)[1].decode("latin-1"))
        pos += 12 + length
    return found


def mark_csv(data: bytes, token: str) -> bytes:
    return f"# {MARK_KEY}: {token}\n".encode() + data


def mark_json(data: bytes, token: str) -> bytes:
    try:
        doc = json.loads(data)
    except ValueError:
        return data
    if not isinstance(doc, dict):
        return data
    return json.dumps({**doc, MARK_KEY: token}, indent=2, sort_keys=True).encode() + b"\n"

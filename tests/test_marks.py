"""Recipient marks survive copy-paste and retyping, and the tracer names the recipient."""

from __future__ import annotations

import re

from disclosure import marks

FINDING = (
    "We observe that an induction head forms in the second layer at approximately step 300. "
    "In particular, the prefix-matching score rises quickly, however the copying score does "
    "not move until several hundred steps later. This suggests that the two circuits are "
    "learned in sequence rather than together, and it is important to note that the effect "
    "appears in every seed we have tried.\n\n"
    "For example, the H3 model shows the same ordering: its shift SSM typically learns a "
    "previous-token filter first. We therefore think the method is not specific to attention; "
    "consequently, the results do not depend on the architecture. Finally, the diagonal SSM "
    "kernel is nearly identical across seeds, which surprisingly holds for the S4D ablation "
    "as well."
)
RECIPIENTS = [(f"partner-{i}", f"mark-secret-{i}") for i in range(20)]


def _retype(text: str) -> str:
    """What a person retyping or re-saving the text would produce: no zero-width
    characters, whitespace normalised."""
    return re.sub(r"\s+", " ", re.sub(f"[{marks.ZW0}{marks.ZW1}{marks.ZW_END}]", "", text))


def test_marked_copies_differ_between_recipients_but_keep_the_meaning() -> None:
    a = _retype(marks.mark_text(FINDING, "mark-secret-1"))
    b = _retype(marks.mark_text(FINDING, "mark-secret-2"))
    assert a != b
    assert marks._canonical(a) == marks._canonical(b) == marks._canonical(_retype(FINDING))


def test_a_retyped_excerpt_of_a_few_sentences_is_traced_to_its_recipient() -> None:
    for name, secret in RECIPIENTS[:5]:
        copy = _retype(marks.mark_text(FINDING, secret))
        sentences = re.split(r"(?<=[.!?])\s+", copy)
        excerpt = " ".join(sentences[1:4])
        result = marks.trace(excerpt, RECIPIENTS)
        assert result.recipient == name, result.detail


def test_copy_paste_keeps_the_exact_zero_width_mark() -> None:
    copy = marks.mark_text(FINDING, "mark-secret-7")
    paragraph = copy.split("\n\n")[1]
    result = marks.trace(paragraph, RECIPIENTS)
    assert (result.recipient, result.method) == ("partner-7", "zero-width")


def test_unmarked_or_too_short_text_is_not_attributed() -> None:
    assert marks.trace(_retype(FINDING)[:80], RECIPIENTS).recipient is None
    whole = _retype(FINDING)
    assert marks.trace(whole, RECIPIENTS, originals=[FINDING]).recipient is None
    unrelated = "The weather was nice. We went for a walk by the river."
    assert marks.trace(unrelated, RECIPIENTS).recipient is None


def test_code_is_left_exactly_as_written() -> None:
    text = "We observe this. Run `python -m h3lab probe --kind induction` for example.\n"
    marked = marks.mark_text(text, "s")
    assert "`python -m h3lab probe --kind induction`" in marked

"""Token datasets from JSON Lines files: one example per line.

Format (UTF-8, one JSON object per line; blank lines are skipped)::

    {"input_ids": [3, 7, 1, 7], "target": 1}
    {"input_ids": [5, 2, 9, 5], "target": 2, "split": "test"}

- ``input_ids``: a list of integer token ids in ``[0, vocab_size)``; every example in a file
  has the same length, which must equal the task's ``seq_len``.
- ``target``: the integer token that should follow ``input_ids`` — the example's answer.
- ``split`` (optional): ``"train"`` or ``"test"``. Examples without it are split by
  position: the last ones (up to ``num_test``, at most a fifth of them) are the test set.

Like the synthetic tasks, an example becomes the next-token pair ``inputs = input_ids`` and
``targets = input_ids[1:] + [target]``: loss on every position, accuracy on the last one
(whose target is ``target``). Every error names the file and line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


class JSONLError(ValueError):
    """A JSONL file is malformed; the message names the file and the 1-based line."""


@dataclass(frozen=True)
class JSONLExample:
    input_ids: list[int]
    target: int
    split: str | None
    line: int


def _is_token(x: Any, vocab_size: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < vocab_size


def parse_line(text: str, *, line: int, where: str, vocab_size: int) -> JSONLExample:
    """Parse and validate one line; raises JSONLError naming ``where:line``."""
    at = f"{where}:{line}"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JSONLError(f"{at}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise JSONLError(f"{at}: expected a JSON object, got {type(obj).__name__}")
    unknown = set(obj) - {"input_ids", "target", "split"}
    if unknown:
        raise JSONLError(f"{at}: unknown field(s) {', '.join(sorted(unknown))}")
    ids = obj.get("input_ids")
    if not isinstance(ids, list) or not ids:
        raise JSONLError(f'{at}: "input_ids" must be a non-empty list of token ids')
    for i, tok in enumerate(ids):
        if not _is_token(tok, vocab_size):
            raise JSONLError(
                f'{at}: "input_ids"[{i}] = {tok!r} is not a token id in [0, {vocab_size})'
            )
    if "target" not in obj:
        raise JSONLError(f'{at}: missing "target"')
    if not _is_token(obj["target"], vocab_size):
        raise JSONLError(
            f'{at}: "target" = {obj["target"]!r} is not a token id in [0, {vocab_size})'
        )
    split = obj.get("split")
    if split not in (None, "train", "test"):
        raise JSONLError(f'{at}: "split" must be "train" or "test", got {split!r}')
    return JSONLExample(input_ids=ids, target=obj["target"], split=split, line=line)


def read_jsonl(
    path: str | Path, *, vocab_size: int, seq_len: int | None = None
) -> list[JSONLExample]:
    """Every example in the file, validated. ``seq_len`` (if given) is the required length of
    ``input_ids``; otherwise the first example's length is required of all."""
    path = Path(path)
    examples: list[JSONLExample] = []
    with path.open(encoding="utf-8") as f:
        for line_no, text in enumerate(f, start=1):
            if not text.strip():
                continue
            ex = parse_line(text, line=line_no, where=str(path), vocab_size=vocab_size)
            want = (
                seq_len if seq_len is not None else len(examples[0].input_ids) if examples else None
            )
            if want is not None and len(ex.input_ids) != want:
                raise JSONLError(
                    f'{path}:{line_no}: "input_ids" has {len(ex.input_ids)} tokens, expected '
                    f"{want} (every example must have the task's seq_len)"
                )
            examples.append(ex)
    if not examples:
        raise JSONLError(f"{path}: no examples")
    return examples


def to_tensors(examples: list[JSONLExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples as next-token ``(inputs, targets)``, each ``(N, L)`` long."""
    full = torch.tensor([[*ex.input_ids, ex.target] for ex in examples], dtype=torch.long)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()  # (N, L) each


def jsonl_splits(
    path: str | Path, *, vocab_size: int, seq_len: int, num_train: int, num_test: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Train and test tensors from one file (explicit ``split`` fields first, then by position).

    At most ``num_train`` / ``num_test`` examples are kept, in file order.
    """
    examples = read_jsonl(path, vocab_size=vocab_size, seq_len=seq_len)
    train = [ex for ex in examples if ex.split == "train"]
    test = [ex for ex in examples if ex.split == "test"]
    rest = [ex for ex in examples if ex.split is None]
    n_rest_test = min(num_test - len(test), len(rest) // 5) if len(test) < num_test else 0
    if n_rest_test > 0:
        test += rest[-n_rest_test:]
        rest = rest[:-n_rest_test]
    train += rest
    if not train:
        raise JSONLError(f"{path}: no training examples (add more lines or split fields)")
    if not test:
        raise JSONLError(
            f'{path}: no test examples: give some lines "split": "test", or provide at least '
            "5 examples so the last fifth can be held out"
        )
    return to_tensors(train[:num_train]), to_tensors(test[:num_test])

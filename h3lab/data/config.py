"""The dataset half of a run's config: which task, its sizes and seed, and its validation.

Owned by the data package (:func:`h3lab.data.datasets.make_datasets` reads it);
:mod:`h3lab.config` composes it into a run's config. Pure Python: no torch, no Django, and
nothing from above :mod:`h3lab.data`, so importing it (as the web forms and the API do through
:mod:`h3lab.config`) stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskName = Literal[
    "associative_recall_safari",
    "induction_head_safari",
    "associative_recall",
    "induction_head",
    "associative_recall_h3lab",
    "induction_head_h3lab",
    "text",
    "jsonl",
]
TASKS: tuple[str, ...] = (
    "associative_recall_safari",
    "induction_head_safari",
    "associative_recall",
    "induction_head",
    "associative_recall_h3lab",
    "induction_head_h3lab",
    "text",
    "jsonl",
)
# The paper's tasks with safari's semantics; the others are h3lab's earlier generators, kept
# under their stored names (and a ``_h3lab`` alias) so stored runs regenerate their data.
SAFARI_TASKS: tuple[str, ...] = ("associative_recall_safari", "induction_head_safari")
SYNTHETIC_TASKS: tuple[str, ...] = TASKS[:6]
# Tokens the model reads beyond ``seq_len`` (the context before the query) in safari's tasks:
# ``=> key`` for associative recall, ``=>`` for induction head.
EXTRA_TOKENS: dict[str, int] = {"associative_recall_safari": 2, "induction_head_safari": 1}
# The paper's sizes (vocabulary, seq_len) for each synthetic task.
PAPER_SIZES: dict[str, tuple[int, int]] = {
    "associative_recall_safari": (10, 20),
    "induction_head_safari": (20, 30),
}
TEXT_VOCAB = 256  # byte-level


@dataclass(frozen=True)
class TaskConfig:
    """A dataset. Synthetic tasks follow the H3 paper's protocol (seeded, loss on every
    token, accuracy on the final token). ``path`` is a UTF-8 text file for ``text`` or a JSONL
    file for ``jsonl``. ``num_val`` validation examples are drawn from a stream of their own
    (synthetic tasks) for checkpoint selection and early stopping; 0 means none (configs
    stored before the field existed load with 0 and select on test, as they did)."""

    name: str = "associative_recall"
    vocab_size: int = 20
    seq_len: int = 40
    num_train: int = 5000
    num_test: int = 500
    num_val: int = 500
    path: str = ""
    seed: int = 0

    def errors(self) -> dict[str, str]:
        e: dict[str, str] = {}
        if self.name not in TASKS:
            e["name"] = f"unknown task {self.name!r}; choose from {', '.join(TASKS)}"
        if self.name in ("text", "jsonl") and not self.path:
            e["path"] = f"the {self.name} task needs a file path"
        if not 2 <= self.seq_len <= 65536:
            e["seq_len"] = "must be between 2 and 65,536"
        legacy = self.name in SYNTHETIC_TASKS and self.name not in SAFARI_TASKS
        if legacy and self.seq_len < 4:
            e["seq_len"] = "synthetic tasks need at least 4 tokens"
        if legacy and self.vocab_size < 4:
            e["vocab_size"] = "must be at least 4"
        if self.name == "associative_recall_safari" and (self.seq_len % 2 or self.seq_len < 2):
            e["seq_len"] = "must be even (key/value pairs before the query)"
        if self.name == "associative_recall_safari" and self.vocab_size < 6:
            e["vocab_size"] = "must be at least 6 (2 special tokens, 2 keys, 2 values)"
        if self.name == "induction_head_safari" and self.seq_len < 3:
            e["seq_len"] = "must be at least 3"
        if self.name == "induction_head_safari" and self.vocab_size < 4:
            e["vocab_size"] = "must be at least 4 (2 special tokens, 2 ordinary)"
        if self.name == "jsonl" and self.vocab_size < 2:
            e["vocab_size"] = "must be at least 2"
        if self.num_train < 1:
            e["num_train"] = "must be positive"
        if self.num_test < 1:
            e["num_test"] = "must be positive"
        if self.num_val < 0:
            e["num_val"] = "must be ≥ 0"
        return e

    @property
    def input_len(self) -> int:
        """Tokens the model reads per example: ``seq_len`` plus the query tokens of safari's
        tasks."""
        return self.seq_len + EXTRA_TOKENS.get(self.name, 0)

    @property
    def model_vocab_size(self) -> int:
        return TEXT_VOCAB if self.name == "text" else self.vocab_size

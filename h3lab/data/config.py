"""The dataset half of a run's config: which task, its sizes and seed, and its validation.

Owned by the data package (:func:`h3lab.data.datasets.make_datasets` reads it);
:mod:`h3lab.config` composes it into a run's config. Pure Python: no torch, no Django, and
nothing from above :mod:`h3lab.data`, so importing it (as the web forms and the API do through
:mod:`h3lab.config`) stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskName = Literal["associative_recall", "induction_head", "text", "jsonl"]
TASKS: tuple[str, ...] = ("associative_recall", "induction_head", "text", "jsonl")
TEXT_VOCAB = 256  # byte-level


@dataclass(frozen=True)
class TaskConfig:
    """A dataset. Synthetic tasks follow the H3 paper's protocol (seeded, loss on every
    token, accuracy on the final token). ``path`` is a UTF-8 text file for ``text`` or a JSONL
    file for ``jsonl``."""

    name: str = "associative_recall"
    vocab_size: int = 20
    seq_len: int = 40
    num_train: int = 5000
    num_test: int = 500
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
        if self.name in ("associative_recall", "induction_head") and self.seq_len < 4:
            e["seq_len"] = "synthetic tasks need at least 4 tokens"
        if self.name in ("associative_recall", "induction_head") and self.vocab_size < 4:
            e["vocab_size"] = "must be at least 4"
        if self.name == "jsonl" and self.vocab_size < 2:
            e["vocab_size"] = "must be at least 2"
        if self.num_train < 1:
            e["num_train"] = "must be positive"
        if self.num_test < 1:
            e["num_test"] = "must be positive"
        return e

    @property
    def model_vocab_size(self) -> int:
        return TEXT_VOCAB if self.name == "text" else self.vocab_size

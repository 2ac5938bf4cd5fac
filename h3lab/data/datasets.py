"""Training and evaluation datasets built from a :class:`~h3lab.data.config.TaskConfig`.

Every dataset is a :class:`TokenDataset` of next-token pairs ``inputs`` / ``targets``, both
``(N, L)`` long tensors with ``targets[:, t]`` the token after ``inputs[:, t]``. The
convention across tasks (the H3 paper's): **loss on every position, accuracy on the final
position** — ``targets[:, -1]`` is the task's answer (the recalled value, the induced token,
the JSONL ``target``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from h3lab.data.config import SAFARI_TASKS, TaskConfig
from h3lab.data.jsonl import jsonl_splits
from h3lab.data.synthetic import GENERATORS, unique_examples
from h3lab.data.text import text_splits

# Offsets keep the train and test draws of one seed from sharing a random stream.
_TRAIN_STREAM, _TEST_STREAM = 0, 1


@dataclass(frozen=True)
class TokenDataset:
    """Next-token pairs. ``inputs``, ``targets``: (N, L) long."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape or self.inputs.dim() != 2:
            raise ValueError(
                f"inputs {tuple(self.inputs.shape)} and targets {tuple(self.targets.shape)} "
                "must both be (N, L)"
            )

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``index`` (B,) as ``(inputs, targets)``, each (B, L)."""
        return self.inputs[index], self.targets[index]


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 2 + stream)


def split_generator(seed: int, split: str) -> torch.Generator:
    """A generator for one split of one seed, seeded by a hash of ``(seed, split)``: streams
    of different splits and seeds never coincide (the legacy ``seed * 2 + stream`` scheme
    gives seed 1's train stream to seed 0's test + 1). Used for safari's tasks and for every
    validation split."""
    digest = hashlib.sha256(f"h3lab:{seed}:{split}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


@dataclass(frozen=True)
class Splits:
    """Train, validation and test sets. ``val`` is empty (0 rows) when the task has none."""

    train: TokenDataset
    val: TokenDataset
    test: TokenDataset


def make_splits(task: TaskConfig) -> Splits:
    """The task's train / validation / test sets, each deterministic given ``task.seed``.

    Synthetic tasks draw each split from its own random stream, so the three are independent
    samples of one distribution (safari's tasks additionally hold no duplicate within a
    split, as safari builds them); they overlap only by chance (see tests/ml/test_data.py).
    Text and JSONL have no validation split here (``val`` is empty). Raises ValueError for an
    invalid task or unreadable file.
    """
    train, test = make_datasets(task)
    val = TokenDataset(train.inputs[:0], train.targets[:0])
    if task.num_val and task.name in GENERATORS:
        val = TokenDataset(*_synthetic(task, task.num_val, "val"))
    return Splits(train=train, val=val, test=test)


def _synthetic(task: TaskConfig, n: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = GENERATORS[task.name]
    if task.name in SAFARI_TASKS:
        return unique_examples(
            lambda k, g: gen(k, task.vocab_size, task.seq_len, g),
            n,
            split_generator(task.seed, split),
        )
    if split == "val":
        return gen(n, task.vocab_size, task.seq_len, split_generator(task.seed, split))
    stream = _TRAIN_STREAM if split == "train" else _TEST_STREAM
    return gen(n, task.vocab_size, task.seq_len, _generator(task.seed, stream))


def make_datasets(task: TaskConfig) -> tuple[TokenDataset, TokenDataset]:
    """The task's ``(train, test)`` datasets; deterministic given ``task.seed``.

    Synthetic tasks draw train and test from independent streams of the same seed (the
    paper's 5,000 / 500 examples by default); text is split by position; JSONL by its
    ``split`` fields or position. Raises ValueError for an invalid task or unreadable file.
    """
    errors = task.errors()
    if errors:
        raise ValueError("; ".join(f"{k}: {v}" for k, v in errors.items()))
    if task.name in GENERATORS:
        train = _synthetic(task, task.num_train, "train")
        test = _synthetic(task, task.num_test, "test")
    elif task.name == "text":
        train, test = text_splits(
            task.path,
            seq_len=task.seq_len,
            num_train=task.num_train,
            num_test=task.num_test,
            generator=_generator(task.seed, _TRAIN_STREAM),
        )
    elif task.name == "jsonl":
        train, test = jsonl_splits(
            task.path,
            vocab_size=task.vocab_size,
            seq_len=task.seq_len,
            num_train=task.num_train,
            num_test=task.num_test,
        )
    else:  # pragma: no cover - TaskConfig.errors() rejects unknown names
        raise ValueError(f"unknown task {task.name!r}")
    return TokenDataset(*train), TokenDataset(*test)


__all__ = ["Splits", "TokenDataset", "make_datasets", "make_splits", "split_generator"]

"""The datasets follow the H3 paper's protocol and fail loudly on bad files."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from h3lab.data.config import TaskConfig
from h3lab.data.datasets import make_datasets
from h3lab.data.jsonl import JSONLError, read_jsonl
from h3lab.data.synthetic import associative_recall, induction_head


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("vocab", "length"), [(20, 40), (10, 20), (20, 41)])
def test_associative_recall_targets_the_value_bound_to_the_query_key(
    vocab: int, length: int
) -> None:
    x, y = associative_recall(200, vocab, length, _gen(0))
    assert x.shape == y.shape == (200, length)
    assert torch.equal(x[:, 1:], y[:, :-1])  # next-token pairs
    assert int(x.min()) >= 0 and int(x.max()) < vocab
    keys = x[:, -1]
    assert bool((keys < vocab // 2).all())
    for row in range(200):
        seq, key = x[row].tolist(), int(keys[row])
        # the answer is the value right after an earlier occurrence of the query key
        values = {seq[i + 1] for i in range(len(seq) - 2) if seq[i] == key}
        assert values == {int(y[row, -1])}


def test_induction_head_targets_the_token_after_the_first_special_token() -> None:
    x, y = induction_head(300, 20, 30, _gen(1))
    assert x.shape == y.shape == (300, 30)
    special = 19
    assert bool((x[:, -1] == special).all())
    assert bool(((x == special).sum(1) == 2).all())
    first = (x == special).int().argmax(1)
    assert torch.equal(y[:, -1], x[torch.arange(300), first + 1])
    assert int(y[:, -1].max()) < special


def test_make_datasets_is_deterministic_under_a_seed_and_splits_train_from_test() -> None:
    task = TaskConfig(name="induction_head", vocab_size=20, seq_len=30, num_train=50, num_test=20)
    train_a, test_a = make_datasets(task)
    train_b, _ = make_datasets(task)
    train_c, _ = make_datasets(TaskConfig(**{**task.__dict__, "seed": 1}))
    assert torch.equal(train_a.inputs, train_b.inputs)
    assert not torch.equal(train_a.inputs, train_c.inputs)
    assert (len(train_a), len(test_a)) == (50, 20)
    assert not torch.equal(train_a.inputs[:20], test_a.inputs)


def test_the_paper_sizes_are_the_defaults() -> None:
    train, test = make_datasets(TaskConfig())
    assert train.inputs.shape == (5000, 40) and test.inputs.shape == (500, 40)


def test_text_windows_are_bytes_split_by_position(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij" * 100, encoding="utf-8")
    train, test = make_datasets(
        TaskConfig(name="text", path=str(path), seq_len=16, num_train=30, num_test=5)
    )
    assert train.inputs.shape == (30, 16) and test.inputs.shape == (5, 16)
    assert torch.equal(train.inputs[:, 1:], train.targets[:, :-1])
    assert int(train.inputs.max()) < 256


def _write(path: Path, rows: Sequence[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_examples_become_next_token_pairs_with_the_target_last(tmp_path: Path) -> None:
    rows = [{"input_ids": [i % 5, 1, 2], "target": 3} for i in range(9)]
    rows.append({"input_ids": [4, 4, 4], "target": 0, "split": "test"})
    path = _write(tmp_path / "d.jsonl", rows)
    train, test = make_datasets(
        TaskConfig(name="jsonl", path=str(path), vocab_size=5, seq_len=3, num_test=3)
    )
    assert test.targets[0].tolist() == [4, 4, 0]
    assert len(train) + len(test) == 10
    assert train.targets[0].tolist() == [1, 2, 3]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"input_ids": [1, 9], "target": 1}, '"input_ids"[1] = 9'),
        ({"input_ids": [1, 2]}, 'missing "target"'),
        ({"input_ids": [1, 2, 3], "target": 1}, "has 3 tokens, expected 2"),
        ({"input_ids": [1, 2], "target": 1, "split": "dev"}, '"split"'),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, bad: object, message: str) -> None:
    path = _write(tmp_path / "d.jsonl", [{"input_ids": [1, 2], "target": 0}, "", bad])
    with pytest.raises(JSONLError) as err:
        read_jsonl(path, vocab_size=5)
    assert "d.jsonl:3:" in str(err.value)
    assert message in str(err.value)

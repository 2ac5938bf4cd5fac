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


# ------------------------------------------------------------------ the paper's tasks (safari)


def test_safari_associative_recall_follows_the_documented_token_layout() -> None:
    from h3lab.data.synthetic import associative_recall_safari

    V, L = 10, 20
    x, y = associative_recall_safari(400, V, L, _gen(3))
    assert x.shape == y.shape == (400, L + 2)
    assert torch.equal(x[:, 1:], y[:, :-1])
    keys, values = set(range(1, 5)), set(range(5, 9))  # 8 ordinary ids split 4 / 4
    assert bool((x[:, L] == V - 1).all())  # "=>" right after the pairs
    assert not bool((x[:, :L] == V - 1).any()) and not bool((x == 0).any())  # "." never occurs
    for row in range(400):
        seq = x[row].tolist()
        assert set(seq[0:L:2]) <= keys and set(seq[1:L:2]) <= values
        binding: dict[int, int] = {}
        for k, v in zip(seq[0:L:2], seq[1:L:2], strict=True):
            assert binding.setdefault(k, v) == v  # one map per example
        assert seq[-1] in binding and binding[seq[-1]] == int(y[row, -1])


def test_safari_recall_queries_are_uniform_over_the_keys_present_and_maps_are_fresh() -> None:
    from h3lab.data.synthetic import associative_recall_safari

    x, _ = associative_recall_safari(4000, 10, 20, _gen(4))
    # Uniform over the distinct keys present: the query key occurs, on average, as often as
    # the average present key. Picking a random *pair* (h3lab's generator) favours frequent
    # keys and would give the mean of count² / pairs instead, about 1.3× more here.
    got, uniform, by_pair = 0.0, 0.0, 0.0
    for row in x.tolist():
        keys = row[0:20:2]
        counts = {k: keys.count(k) for k in set(keys)}
        got += counts[row[-1]]
        uniform += 10 / len(counts)
        by_pair += sum(c * c for c in counts.values()) / 10
    assert abs(got - uniform) / uniform < 0.03
    assert by_pair / uniform > 1.2
    # Different examples bind key 1 to different values: the map is drawn per example.
    bound = {row[row.index(1) + 1] for row in x.tolist()[:200] if 1 in row[0:20:2]}
    assert len(bound) == 4


def test_safari_induction_head_copies_the_token_after_the_first_trigger() -> None:
    from h3lab.data.synthetic import induction_head_safari

    V, L = 20, 30
    x, y = induction_head_safari(300, V, L, _gen(5))
    assert x.shape == (300, L + 1)
    assert bool((x[:, -1] == V - 1).all())
    assert bool(((x == V - 1).sum(1) == 2).all())  # the trigger occurs exactly twice
    first = (x == V - 1).int().argmax(1)
    assert int(first.max()) <= L - 3
    assert torch.equal(y[:, -1], x[torch.arange(300), first + 1])
    assert int(y[:, -1].min()) >= 1 and int(y[:, -1].max()) <= V - 2


def test_train_validation_and_test_are_independent_and_overlap_no_more_than_chance() -> None:
    from h3lab.data.datasets import make_splits

    for name, (V, L) in {
        "associative_recall_safari": (10, 20),
        "induction_head_safari": (20, 30),
    }.items():
        s = make_splits(TaskConfig(name=name, vocab_size=V, seq_len=L))
        assert (len(s.train), len(s.val), len(s.test)) == (5000, 500, 500)
        rows = {
            split: {tuple(r) for r in torch.cat([d.inputs, d.targets[:, -1:]], 1).tolist()}
            for split, d in (("train", s.train), ("val", s.val), ("test", s.test))
        }
        assert len(rows["train"]) == 5000  # no duplicates within a split, as in safari
        # Chance of a repeat is < 1e-9 per pair at these sizes: any overlap means shared streams.
        assert not rows["train"] & rows["test"]
        assert not rows["train"] & rows["val"]
        assert not rows["val"] & rows["test"]


def test_splits_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    from h3lab.data.datasets import make_splits

    task = TaskConfig(name="associative_recall_safari", vocab_size=10, seq_len=20, num_train=64)
    a, b = make_splits(task), make_splits(task)
    c = make_splits(TaskConfig(**{**task.__dict__, "seed": 1}))
    assert torch.equal(a.val.inputs, b.val.inputs) and torch.equal(a.train.inputs, b.train.inputs)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    # Seed 1's training stream is not seed 0's test or validation stream.
    assert not torch.equal(c.train.inputs[:64], a.test.inputs[:64])


def test_the_legacy_task_names_still_generate_the_data_stored_runs_were_trained_on() -> None:
    old = TaskConfig(name="associative_recall", vocab_size=20, seq_len=40, num_train=8)
    alias = TaskConfig(name="associative_recall_h3lab", vocab_size=20, seq_len=40, num_train=8)
    x_old = make_datasets(old)[0].inputs
    assert torch.equal(x_old, make_datasets(alias)[0].inputs)
    assert torch.equal(x_old, associative_recall(8, 20, 40, torch.Generator().manual_seed(0))[0])

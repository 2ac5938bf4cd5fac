"""The H3 paper's synthetic language-modelling tasks: associative recall and induction head.

Two families, selected by task name (see docs/data-format.md for the exact token layouts):

- ``associative_recall_safari`` / ``induction_head_safari`` — **the paper's tasks**, with the
  semantics of its code (HazyResearch/safari ``src/dataloaders/synthetics.py``): the special
  tokens ``.`` and ``=>`` are inside the vocabulary, keys and values are halves of the ordinary
  tokens, ``=>`` marks the query, ``seq_len`` is the context before it. These are the defaults
  of ``python -m h3lab reproduce synthetic``.
- ``associative_recall`` / ``induction_head`` (also spelt ``*_h3lab``) — h3lab's earlier
  generators, described below, kept unchanged so that stored run configs regenerate the
  data they were trained on.

The h3lab generators build a *full* sequence of ``seq_len + 1`` tokens and split it for
next-token prediction: ``inputs = full[:, :-1]`` and ``targets = full[:, 1:]``, each
``(N, seq_len)``. Loss is taken on every position (as the paper trains), and accuracy on the
final position only, whose target is the task's answer (see :mod:`h3lab.data.datasets`).

Associative recall (vocab ``V``): keys are tokens ``[0, V//2)``, values ``[V//2, V)``. Each
example draws its own key→value map, then ``(seq_len - 1) // 2`` key/value pairs with keys
drawn with replacement (a repeated key always carries the same value), then a query key drawn
from the keys present; the answer is the query's value. The paper's example
``a 2 c 4 b 3 d 1 a → 2``. When ``seq_len`` is even one value token leads the sequence, as if
a window had cut a pair in half, so the query always sits at the last input position.

Induction head (vocab ``V``): token ``V - 1`` is the special token, ``[0, V - 1)`` are ordinary.
The sequence is random ordinary tokens with the special token placed once at a random position
``p ≤ seq_len - 3`` and again at the last input position; the answer is the token that followed
it at ``p + 1``.

Everything is drawn from a ``torch.Generator`` so a seed fixes the data exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Generator = Callable[[int, int, int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def associative_recall(
    num_examples: int, vocab_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Associative-recall examples as ``(inputs, targets)``, both ``(N, seq_len)`` long.

    ``targets[:, -1]`` is the value bound to the query key ``inputs[:, -1]``.
    """
    if vocab_size < 4 or seq_len < 4:
        raise ValueError("associative recall needs vocab_size ≥ 4 and seq_len ≥ 4")
    n, g = num_examples, generator
    n_keys = vocab_size // 2
    n_values = vocab_size - n_keys
    n_pairs = (seq_len - 1) // 2
    lead = seq_len - 1 - 2 * n_pairs  # 0 or 1 leading value token
    # Per-example key -> value map: (N, n_keys) of value ids.
    kv_map = n_keys + torch.randint(n_values, (n, n_keys), generator=g)
    keys = torch.randint(n_keys, (n, n_pairs), generator=g)  # (N, P)
    values = torch.gather(kv_map, 1, keys)  # (N, P)
    pairs = torch.stack([keys, values], dim=-1).reshape(n, 2 * n_pairs)  # (N, 2P) k v k v ...
    # Query a key that occurs: pick a random pair and ask for its key.
    which = torch.randint(n_pairs, (n, 1), generator=g)  # (N, 1)
    query = torch.gather(keys, 1, which)  # (N, 1)
    answer = torch.gather(kv_map, 1, query)  # (N, 1)
    leading = n_keys + torch.randint(n_values, (n, lead), generator=g)  # (N, 0|1)
    full = torch.cat([leading, pairs, query, answer], dim=1)  # (N, seq_len + 1)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()


def induction_head(
    num_examples: int, vocab_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Induction-head examples as ``(inputs, targets)``, both ``(N, seq_len)`` long.

    ``inputs[:, -1]`` is the special token ``vocab_size - 1``; ``targets[:, -1]`` is the token
    that followed its first occurrence.
    """
    if vocab_size < 3 or seq_len < 4:
        raise ValueError("induction head needs vocab_size ≥ 3 and seq_len ≥ 4")
    n, g = num_examples, generator
    special = vocab_size - 1
    full = torch.randint(special, (n, seq_len + 1), generator=g)  # (N, L + 1) ordinary tokens
    # First special token at p in [0, L - 3], so the token to copy (p + 1) precedes the
    # second special token at L - 1.
    p = torch.randint(seq_len - 2, (n, 1), generator=g)  # (N, 1)
    full.scatter_(1, p, special)
    full[:, seq_len - 1] = special
    full[:, seq_len] = torch.gather(full, 1, p + 1).squeeze(1)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()


# --------------------------------------------------------------------------------------------
# The paper's tasks, with safari's semantics (HazyResearch/safari, src/dataloaders/synthetics.py)
# --------------------------------------------------------------------------------------------

NOOP, N_SPECIAL = 0, 2  # "." is id 0 and "=>" is id vocab_size - 1: both count in the vocab


def query_marker(vocab_size: int) -> int:
    """The id of safari's ``=>`` token (the query marker / induction trigger)."""
    return vocab_size - 1


def associative_recall_safari(
    num_examples: int, vocab_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Safari's associative recall: ``(inputs, targets)``, both ``(N, seq_len + 2)`` long.

    Vocabulary ``V`` counts two special tokens: ``.`` = id 0 (safari's no-op, which never
    occurs here: the query always names a key present) and ``=>`` = id ``V − 1``. The
    ``V − 2`` ordinary ids ``1 … V − 2`` split into keys (the first ``(V − 2) // 2``) and values
    (the rest). Each example draws a fresh key → value map (values with replacement), then
    ``seq_len / 2`` pairs ``k map[k]`` with keys uniform with replacement, then ``=>``, a query
    key uniform over the distinct keys present, and its value — the answer, ``targets[:, -1]``.
    ``seq_len`` (safari's ``input_seq_len``) must be even.
    """
    if vocab_size < 6 or seq_len < 2 or seq_len % 2:
        raise ValueError("associative recall needs vocab_size ≥ 6 and an even seq_len ≥ 2")
    n, g = num_examples, generator
    n_ord = vocab_size - N_SPECIAL
    n_keys = n_ord // 2
    n_values = n_ord - n_keys
    n_pairs = seq_len // 2
    key0, value0 = 1, 1 + n_keys  # first key id, first value id
    kv_map = value0 + torch.randint(n_values, (n, n_keys), generator=g)  # (N, K) value ids
    keys = torch.randint(n_keys, (n, n_pairs), generator=g)  # (N, P) key indices
    values = torch.gather(kv_map, 1, keys)  # (N, P)
    pairs = torch.stack([keys + key0, values], dim=-1).reshape(n, seq_len)  # (N, L) k v k v …
    present = torch.zeros(n, n_keys).scatter_(1, keys, 1.0)  # (N, K) 1 where the key occurs
    query = torch.multinomial(present, 1, generator=g)  # (N, 1) uniform over present keys
    answer = torch.gather(kv_map, 1, query)  # (N, 1)
    marker = torch.full((n, 1), query_marker(vocab_size), dtype=torch.long)
    full = torch.cat([pairs, marker, query + key0, answer], dim=1)  # (N, L + 3)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()


def induction_head_safari(
    num_examples: int, vocab_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Safari's induction head: ``(inputs, targets)``, both ``(N, seq_len + 1)`` long.

    ``seq_len`` ordinary tokens (ids ``1 … V − 2``, uniform) with the trigger ``=>`` (id
    ``V − 1``) written over position ``p`` uniform in ``[0, seq_len − 3]``, then ``=>`` again,
    then the answer: the token that followed the first trigger (``targets[:, -1]``).
    """
    if vocab_size < 4 or seq_len < 3:
        raise ValueError("induction head needs vocab_size ≥ 4 and seq_len ≥ 3")
    n, g = num_examples, generator
    trigger = query_marker(vocab_size)
    seq = 1 + torch.randint(vocab_size - N_SPECIAL, (n, seq_len), generator=g)  # (N, L)
    p = torch.randint(seq_len - 2, (n, 1), generator=g)  # (N, 1)
    seq.scatter_(1, p, trigger)
    answer = torch.gather(seq, 1, p + 1)  # (N, 1)
    full = torch.cat([seq, torch.full((n, 1), trigger), answer], dim=1)  # (N, L + 2)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()


def unique_examples(
    make: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    num_examples: int,
    generator: torch.Generator,
    max_rounds: int = 100,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_examples`` distinct examples from ``make(n, generator)``, as safari builds each
    split (it drops duplicates and draws more until the count is reached). Keeps the first
    occurrence, in draw order; raises ValueError if the task cannot supply that many."""
    x, y = make(num_examples, generator)
    for _ in range(max_rounds):
        full = torch.cat([x, y[:, -1:]], dim=1)  # (N, L + 1) the whole example
        _, inverse = torch.unique(full, dim=0, return_inverse=True)
        first = torch.full((int(inverse.max()) + 1,), len(full), dtype=torch.long)
        first.scatter_reduce_(0, inverse, torch.arange(len(full)), reduce="amin")
        keep = first.sort().values  # indices of first occurrences, in order
        x, y = x[keep], y[keep]
        if len(x) >= num_examples:
            return x[:num_examples].contiguous(), y[:num_examples].contiguous()
        more_x, more_y = make(num_examples - len(x), generator)
        x, y = torch.cat([x, more_x]), torch.cat([y, more_y])
    raise ValueError(f"could not draw {num_examples} distinct examples")


GENERATORS: dict[str, Generator] = {
    "associative_recall": associative_recall,
    "induction_head": induction_head,
    "associative_recall_h3lab": associative_recall,
    "induction_head_h3lab": induction_head,
    "associative_recall_safari": associative_recall_safari,
    "induction_head_safari": induction_head_safari,
}

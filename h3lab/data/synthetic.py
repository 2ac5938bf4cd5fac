"""The H3 paper's synthetic language-modelling tasks: associative recall and induction head.

Both generators build a *full* sequence of ``seq_len + 1`` tokens and split it for
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

import torch


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


GENERATORS = {"associative_recall": associative_recall, "induction_head": induction_head}

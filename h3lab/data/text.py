"""Byte-level text corpora: random windows over any UTF-8 file.

The file's bytes are the tokens (vocabulary 256). The corpus is split *by position* — the
first ``1 - test_fraction`` of the bytes for training, the rest for testing — so no test
window overlaps a training window. Each example is a window of ``seq_len + 1`` bytes starting
at a uniformly random offset, drawn from a seeded ``torch.Generator``.
"""

from __future__ import annotations

from pathlib import Path

import torch


def read_bytes(path: str | Path) -> torch.Tensor:
    """The file as a ``(T,)`` uint8 tensor; raises ValueError if it is not valid UTF-8."""
    raw = Path(path).read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def random_windows(
    data: torch.Tensor, num_windows: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_windows`` random windows of ``data`` (T,) as ``(inputs, targets)``, each
    ``(N, seq_len)`` long, with targets shifted one byte ahead."""
    span = seq_len + 1
    if data.numel() < span:
        raise ValueError(f"need at least {span} bytes for seq_len {seq_len}, have {data.numel()}")
    starts = torch.randint(data.numel() - span + 1, (num_windows,), generator=generator)  # (N,)
    idx = starts[:, None] + torch.arange(span)[None, :]  # (N, L + 1)
    full = data.long()[idx]  # (N, L + 1)
    return full[:, :-1].contiguous(), full[:, 1:].contiguous()


def text_splits(
    path: str | Path,
    *,
    seq_len: int,
    num_train: int,
    num_test: int,
    generator: torch.Generator,
    test_fraction: float = 0.1,
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Train and test windows from one file, split by position (test = the last bytes).

    The test region is at least one window long, so small files still split.
    """
    data = read_bytes(path)  # (T,)
    span = seq_len + 1
    n_test = max(span, int(data.numel() * test_fraction))
    if data.numel() - n_test < span:
        raise ValueError(
            f"{path}: {data.numel()} bytes is too short to split into train and test "
            f"windows of {span} bytes"
        )
    train = random_windows(data[:-n_test], num_train, seq_len, generator)
    test = random_windows(data[-n_test:], num_test, seq_len, generator)
    return train, test

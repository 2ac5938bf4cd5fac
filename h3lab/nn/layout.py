"""Linear projections into and out of the channels-first layout the FFT convolutions want.

Sequence mixers receive (B, L, D) activations, but an FFT along L is fastest when L is the
contiguous axis: MKL's strided transform along a middle axis measured ~2× slower than
transposing first. Asking BLAS for the transposed product directly (``baddbmm`` with a
transposed operand) yields the (B, C, L) layout with the bias fused in and no separate
transpose copy, and the backward stays a pair of GEMMs.
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear_to_channels_first(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``(x @ weightᵀ + bias)`` transposed: x (B, L, D_in), weight (C, D_in), bias (C,)
    → (B, C, L) contiguous."""
    B, L, _ = x.shape
    w = weight.expand(B, -1, -1)  # (B, C, D_in), a view
    if bias is None:
        return torch.bmm(w, x.mT)
    return torch.baddbmm(bias[:, None].expand(B, -1, L), w, x.mT)  # (B, C, L)


def linear_from_channels_first(y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``yᵀ @ weightᵀ + bias``: y (B, C, L), weight (D_out, C), bias (D_out,)
    → (B, L, D_out) contiguous."""
    B, _, L = y.shape
    w = weight.mT.expand(B, -1, -1)  # (B, C, D_out), a view
    if bias is None:
        return torch.bmm(y.mT, w)
    return torch.baddbmm(bias.expand(B, L, -1), y.mT, w)  # (B, L, D_out)

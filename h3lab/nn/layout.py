"""Linear projections into and out of the channels-first layout the FFT convolutions want.

Sequence mixers receive (B, L, D) activations, but an FFT along L is fastest when L is the
contiguous axis: MKL's strided transform along a middle axis measured ~2× slower than
transposing first. Asking BLAS for the transposed product directly (``baddbmm`` with a
transposed operand) yields the (B, C, L) layout with the bias fused in and no separate
transpose copy, and the backward stays a pair of GEMMs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor


def linear_to_channels_first(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``(x @ weightᵀ + bias)`` transposed: x (B, L, D_in), weight (C, D_in), bias (C,)
    → (B, C, L) contiguous. Differentiable; the gradient of x comes back (B, L, D_in)
    contiguous, the bias's as one sum (see :class:`_ToChannelsFirst`)."""
    if torch.is_autocast_enabled(x.device.type):  # autocast's own casts, through autograd
        return _to_cf(x, weight, bias)
    apply = cast(Callable[..., Tensor], _ToChannelsFirst.apply)  # Function.apply is untyped
    return apply(x, weight, bias)


def linear_from_channels_first(y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``yᵀ @ weightᵀ + bias``: y (B, C, L), weight (D_out, C), bias (D_out,)
    → (B, L, D_out) contiguous. Differentiable; the gradient of y comes back (B, C, L)
    contiguous, as the blocked mixing's backward reads it (see :class:`_FromChannelsFirst`)."""
    if torch.is_autocast_enabled(y.device.type):  # autocast's own casts, through autograd
        return _from_cf(y, weight, bias)
    apply = cast(Callable[..., Tensor], _FromChannelsFirst.apply)  # Function.apply is untyped
    return apply(y, weight, bias)


def linear_to_channels_first_ref(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The slow reference: the plain linear, transposed and copied."""
    return torch.nn.functional.linear(x, weight, bias).mT.contiguous()


def linear_from_channels_first_ref(y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The slow reference: transpose, copy, plain linear."""
    return torch.nn.functional.linear(y.mT.contiguous(), weight, bias)


# Under autocast (bf16 training on a GPU) the two functions above take that path, so that
# autocast casts the operands as differentiable ops and the gradients of the float32
# parameters come back in float32.
# Autograd through ``baddbmm`` with an expanded bias and a transposed operand works, but its
# backward materialises the expanded bias's gradient (a (B, C, L) copy, then a sum) and hands
# back transposed gradients, which the next consumer copies. The two Functions below write
# every gradient in the layout its consumer wants, each with one GEMM (weight: one per batch
# element, accumulated in place).


def _to_cf(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The product: BLAS writes (B, C, L) from a transposed operand, the bias fused in."""
    B, L, _ = x.shape
    w = weight.expand(B, -1, -1)  # (B, C, D_in), a view
    if bias is None:
        return torch.bmm(w, x.mT)
    return torch.baddbmm(bias[:, None].expand(B, -1, L), w, x.mT)  # (B, C, L)


def _from_cf(y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The product: (B, L, D_out) from the channels-first y, the bias fused in."""
    B, _, L = y.shape
    w = weight.mT.expand(B, -1, -1)  # (B, C, D_out), a view
    if bias is None:
        return torch.bmm(y.mT, w)
    return torch.baddbmm(bias.expand(B, L, -1), y.mT, w)  # (B, L, D_out)


class _ToChannelsFirst(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _to_cf(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors  # g: (B, C, L)
        need = ctx.needs_input_grad
        gx = torch.bmm(g.mT, weight.expand(g.shape[0], -1, -1)) if need[0] else None  # (B, L, D_in)
        gw = _sum_of_products(g, x) if need[1] else None  # Σ_b g_b x_b: (C, D_in)
        gb = g.sum((0, 2)) if ctx.has_bias and need[2] else None
        return gx, gw, gb


class _FromChannelsFirst(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(y, weight)
        ctx.has_bias = bias is not None
        return _from_cf(y, weight, bias)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        y, weight = ctx.saved_tensors  # g: (B, L, D_out)
        need = ctx.needs_input_grad
        gy = torch.bmm(weight.mT.expand(g.shape[0], -1, -1), g.mT) if need[0] else None  # (B, C, L)
        gw = _sum_of_products(g.mT, y.mT) if need[1] else None  # Σ_b g_bᵀ y_bᵀ: (D_out, C)
        gb = g.sum((0, 1)) if ctx.has_bias and need[2] else None
        return gy, gw, gb


def _sum_of_products(a: Tensor, b: Tensor) -> Tensor:
    """Σ_i a_i @ b_i for (B, m, k) and (B, k, n): one GEMM per i accumulated in place."""
    if a.shape[0] == 0:
        return a.new_zeros(a.shape[1], b.shape[2])
    out = torch.mm(a[0], b[0])
    for i in range(1, a.shape[0]):
        out.addmm_(a[i], b[i])
    return out

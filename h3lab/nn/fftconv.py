"""Causal long convolution by FFT, and the direct convolution it must equal.

Contract: ``y[b, h, t] = Σ_{s ≤ t} k[h, t - s] · u[b, h, s] + D[h] · u[b, h, t]`` — a causal
convolution of each channel with its own kernel, plus a skip term. The FFT path zero-pads to a
length where the circular convolution equals the linear one on the first ``L`` outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


@functools.lru_cache(maxsize=256)
def next_fast_len(n: int) -> int:
    """The smallest length ``m = 2^a · 3^b · 5^c ≥ n`` with ``a ≥ b + c``: at least as many
    factors 2 as 3s and 5s together.

    A kernel shorter than the input needs only ``L + Lk - 1`` points, so this often halves the
    transform against the naive ``2L``. Plain 5-smoothness is not enough: odd or 2-poor sizes
    such as 16,875 = 3³·5⁴ or 1,125 = 3²·5³ transform 2.5-4× slower on CPU than a nearby
    2-rich size (17,280 = 2⁷·3³·5, 1,152 = 2⁷·3²), measured with alternated runs of
    rfft+irfft over 1 MiB blocks (``python -m h3lab bench --fft-sizes``). The rule keeps those
    fast sizes and stays within ~8 % of the smallest 5-smooth length above ~1k."""
    if n <= 1:
        return 1
    best = 1 << (n - 1).bit_length()  # the next power of two is always a candidate
    p5, c = 1, 0
    while p5 < best:
        p35, b = p5, 0
        while p35 < best:
            m, a = p35 << (b + c), b + c
            while m < n:
                m, a = m * 2, a + 1
            best = min(best, m)
            p35, b = p35 * 3, b + 1
        p5, c = p5 * 5, c + 1
    return best


# Rows (one channel of one sequence) are transformed a block at a time so that each block's
# padded signal, spectrum and inverse stay in cache and are small enough for malloc to reuse
# rather than map fresh pages for — at 4k-16k tokens whole-tensor transforms spent much of
# their time in page faults and memory traffic. Tunable for experiments.
BLOCK_BYTES = 1 << 20


def _row_blocks(u: Tensor, n: int, min_rows: int = 1) -> list[tuple[slice, slice]]:
    """(batch slice, channel slice) blocks of about BLOCK_BYTES of padded rows of u (B, H, L)
    on CPU, and at least ``min_rows`` rows: several whole sequences per block when they are
    short (per-block overhead would otherwise dominate at L ≈ 40 and batch 128), part of one
    sequence's channels when they are long. A GPU wants the whole batch in one launch."""
    B, H, _ = u.shape
    if u.device.type != "cpu":
        return [(slice(0, B), slice(0, H))]
    rows = max(min_rows, BLOCK_BYTES // (n * u.element_size()))  # padded rows per block
    if rows >= H:
        nb = rows // H
        return [(slice(b, min(B, b + nb)), slice(0, H)) for b in range(0, B, nb)]
    return [
        (slice(b, b + 1), slice(h, min(H, h + rows))) for b in range(B) for h in range(0, H, rows)
    ]


class _FFTConv(torch.autograd.Function):
    """Causal FFT convolution with a hand-written, blocked forward and backward.

    Autograd through rfft/irfft would save the input's spectrum (twice the input's memory at
    n ≈ 2L) and run a chain of padding and complex-to-complex transforms. Here the forward
    saves only ``u`` and the kernel's (small) spectrum, and the backward takes one rfft of the
    incoming gradient, re-transforms ``u``, and needs a single irfft for ``∂u``; the kernel
    gradient is summed over the batch *before* its inverse transform.
    Both gradients are correlations, which the same zero padding keeps exact (``n ≥ L + Lk −
    1`` means no wrapped term reaches a needed lag).
    """

    @staticmethod
    def forward(ctx: Any, u: Tensor, k: Tensor, D: Tensor | None, n: int) -> Tensor:
        L = u.shape[-1]
        Lk = k.shape[-1]
        k_f = torch.fft.rfft(k, n=n)  # (H, n//2+1)
        y = torch.empty_like(u, memory_format=torch.contiguous_format)  # (B, H, L)
        for bs, hs in _row_blocks(u, n):
            uc = u[bs, hs]  # (bc, hc, L)
            yc = torch.fft.irfft(torch.fft.rfft(uc, n=n).mul_(k_f[hs]), n=n)[..., :L]
            if D is None:
                y[bs, hs] = yc
            else:
                torch.addcmul(yc, uc, D[hs, None], out=y[bs, hs])
        ctx.save_for_backward(u, k_f, D)
        ctx.sizes = (L, Lk, n)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        u, k_f, D = ctx.saved_tensors
        L, Lk, n = ctx.sizes
        need_u, need_k, need_D = ctx.needs_input_grad[:3]
        grad_u = grad_k = grad_D = None
        if need_u:
            grad_u = torch.empty_like(u, memory_format=torch.contiguous_format)  # (B, H, L)
        # Σ_b G · conj(U), summed over the batch in frequency space: one small irfft at the end.
        gk_f = torch.zeros_like(k_f) if need_k else None  # (H, n//2+1)
        k_f_conj = k_f.conj()
        for bs, hs in _row_blocks(u, n):
            gc = g[bs, hs]  # (bc, hc, L)
            g_f = torch.fft.rfft(gc, n=n)  # (bc, hc, n//2+1)
            if gk_f is not None:
                # rfft(u) is recomputed rather than saved: memory over time.
                u_f = torch.fft.rfft(u[bs, hs], n=n)
                gk_f[hs] += u_f.conj_physical_().mul_(g_f).sum(0)
            if grad_u is not None:
                gu = torch.fft.irfft(g_f.mul_(k_f_conj[hs]), n=n)[..., :L]
                if D is None:
                    grad_u[bs, hs] = gu
                else:
                    torch.addcmul(gu, gc, D[hs, None], out=grad_u[bs, hs])
        if gk_f is not None:
            grad_k = torch.fft.irfft(gk_f, n=n)[..., :Lk]  # (H, Lk)
        if need_D and D is not None:
            grad_D = (g * u).sum((0, 2))  # (H,)
        return grad_u, grad_k, grad_D, None


def fftconv(u: Tensor, k: Tensor, D: Tensor | None = None) -> Tensor:
    """Causal convolution of ``u`` with per-channel kernels ``k``, by FFT.

    u: (B, H, L) real; k: (H, Lk) real with any ``Lk`` (only the first ``L`` taps can reach
    an output, so a longer kernel is truncated and a shorter one costs a shorter transform);
    D: (H,) skip weights or None. Returns y: (B, H, L) in ``u``'s dtype. Differentiable in
    all three (see :class:`_FFTConv`).
    """
    if u.dtype in (torch.float16, torch.bfloat16):
        # Half-precision FFTs lose the kernel's long tail (and CUDA's only take powers of 2).
        D32 = None if D is None else D.float()
        return fftconv(u.float(), k.float(), D32).to(u.dtype)
    L = u.shape[-1]
    k = k[..., :L]
    n = next_fast_len(L + k.shape[-1] - 1)  # no wrap-around reaches outputs t < L
    apply = cast(Callable[..., Tensor], _FFTConv.apply)  # Function.apply is untyped
    return apply(u, k, D, n)


def direct_conv_ref(u: Tensor, k: Tensor, D: Tensor | None = None) -> Tensor:
    """Slow reference for :func:`fftconv`: the same causal convolution as a grouped conv1d
    (left zero padding, flipped kernel). Shapes as in :func:`fftconv`."""
    H, L = u.shape[-2:]
    k = k[..., :L]
    w = rearrange(k.flip(-1), "h lk -> h 1 lk")  # conv1d correlates, so flip for convolution
    y = F.conv1d(F.pad(u, (k.shape[-1] - 1, 0)), w, groups=H)  # (B, H, L)
    if D is not None:
        y = y + u * D[:, None]
    return y

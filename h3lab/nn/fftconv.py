"""Causal long convolution by FFT, and the direct convolution it must equal.

Contract: ``y[b, h, t] = Σ_{s ≤ t} k[h, t - s] · u[b, h, s] + D[h] · u[b, h, t]`` — a causal
convolution of each channel with its own kernel, plus a skip term. The FFT path zero-pads to a
length where the circular convolution equals the linear one on the first ``L`` outputs.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


@functools.lru_cache(maxsize=256)
def next_fast_len(n: int) -> int:
    """The smallest 5-smooth integer ≥ ``n`` (a product of 2s, 3s and 5s), which MKL and
    pocketFFT transform fastest. A kernel shorter than the input needs only ``L + Lk - 1``
    points, so this often halves the transform against the naive ``2L``."""
    if n <= 1:
        return 1
    best = 1 << (n - 1).bit_length()  # the next power of two is always a candidate
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def fftconv(u: Tensor, k: Tensor, D: Tensor | None = None) -> Tensor:
    """Causal convolution of ``u`` with per-channel kernels ``k``, by FFT.

    u: (B, H, L) real; k: (H, Lk) real with any ``Lk`` (only the first ``L`` taps can reach
    an output, so a longer kernel is truncated and a shorter one costs a shorter transform);
    D: (H,) skip weights or None. Returns y: (B, H, L) in ``u``'s dtype.
    """
    L = u.shape[-1]
    k = k[..., :L]
    n = next_fast_len(L + k.shape[-1] - 1)  # no wrap-around reaches outputs t < L
    u_f = torch.fft.rfft(u, n=n)  # (B, H, n//2+1)
    k_f = torch.fft.rfft(k, n=n)  # (H, n//2+1)
    y = torch.fft.irfft(u_f * k_f, n=n)[..., :L]  # (B, H, L)
    if D is not None:
        y = torch.addcmul(y, u, D[:, None])
    return y


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

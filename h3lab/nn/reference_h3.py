"""A baseline H3 layer that follows the reference implementation's algorithm step by step.

The reference is HazyResearch/H3's pure-PyTorch path (``src/models/ssm/h3.py`` with
``use_fast_fftconv=False``, the diagonal kernel of ``ss_kernel_diag.py`` through the naive
``log_vandermonde`` of ``src/ops/vandermonde.py`` — what runs without its CUDA extensions or
pykeops — the shift kernel of ``ss_kernel_shift.py``, and the FFT convolution of
``src/ops/fftconv.py``'s ``fftconv_ref``). Written here, not copied, so that the speed
benchmark can time the reference's *algorithm* beside h3lab's layer in the same process, on
the same weights:

* three separate projections ``W @ uᵀ + b`` over the flattened (B·L, D) input;
* the shift kernel as the correlation of the trainable input vector B with the taps C,
  computed by an FFT of 2N points and zero-padded to L;
* the diagonal SSM kernel materialising ``exp(l · log Ā)`` as an (H, N/2, L) complex tensor
  (bilinear discretisation), then ``2 Re Σ_n C B̄ Ā^l``;
* both convolutions by FFT of exactly ``2L`` points, the kernel's spectrum divided by the
  size and the inverse taken with ``norm="forward"``, with plain autograd for the backward;
* the per-head outer product ``k_h v_hᵀ`` as a (B, d, d, H, L) broadcast, the contraction
  with q by multiply-and-sum.

Parameters keep the reference's names and shapes (``q_proj``, ``ssm_k_kernel.kernel.B`` …),
so :func:`h3lab.nn.reference_weights.h3_mixer_state_dict` maps them to h3lab's
:class:`~h3lab.nn.h3.H3` (``h3_ssm="head"``, bilinear) and
:func:`~h3lab.nn.reference_weights.reference_mixer_state_dict` maps back. This module is a
yardstick for benchmarks and tests; the model uses :mod:`h3lab.nn.h3`.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn


def fftconv_ref(u: Tensor, k: Tensor, D: Tensor) -> Tensor:
    """The reference's FFT convolution with skip: u (…, H, L), k (H, L), D (H,) → (…, H, L).
    FFT size ``2L``; the kernel spectrum is scaled by ``1/n`` and the inverse is unnormalised
    (``norm="forward"``), as in ``fftconv_ref``."""
    L = u.shape[-1]
    n = 2 * L
    k_f = torch.fft.rfft(k, n=n) / n  # (H, L+1)
    u_f = torch.fft.rfft(u.to(k.dtype), n=n)  # (…, H, L+1)
    y: Tensor = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :L]
    return (y + u * D[:, None]).to(u.dtype)


class _ShiftKernel(nn.Module):
    """``ss_kernel_shift.SSKernelShift``: B (H, N) input vector, C (1, H, N) taps."""

    def __init__(self, channels: int, d_state: int) -> None:
        super().__init__()
        self.B = nn.Parameter(torch.empty(channels, d_state))
        self.C = nn.Parameter(torch.empty(1, channels, d_state))

    def forward(self, L: int) -> Tensor:
        """(1, H, L): ``K[h, l] = Σ_n B[h, n] C[h, n + l]`` for l < N, zero beyond."""
        N = self.B.shape[-1]
        B_f = torch.fft.rfft(self.B, n=2 * N)
        C_f = torch.fft.rfft(self.C, n=2 * N)
        k: Tensor = torch.fft.irfft(B_f.conj() * C_f, n=2 * N)[..., : min(N, L)]
        if N < L:
            k = nn.functional.pad(k, (0, L - N))
        return k  # (1, H, L)


class _DiagKernel(nn.Module):
    """``ss_kernel_diag.SSKernelDiag`` (bilinear, ``real_type="exp"``, one channel):
    ``A = −exp(inv_A_real) + i·A_imag``; complex B, C stored as real (…, 2)."""

    def __init__(self, heads: int, d_state: int) -> None:
        super().__init__()
        n = d_state // 2
        self.log_dt = nn.Parameter(torch.empty(heads))  # (H,)
        self.inv_A_real = nn.Parameter(torch.empty(heads, n))  # (H, N/2)
        self.A_imag = nn.Parameter(torch.empty(heads, n))  # (H, N/2)
        self.B = nn.Parameter(torch.empty(heads, n, 2))  # (H, N/2, re/im)
        self.C = nn.Parameter(torch.empty(1, heads, n, 2))  # (1, H, N/2, re/im)

    def forward(self, L: int) -> Tensor:
        """(1, H, L) real kernel by the naive log-Vandermonde product."""
        dt = torch.exp(self.log_dt)  # (H,)
        C = torch.view_as_complex(self.C)  # (1, H, N/2)
        A = -torch.exp(self.inv_A_real) + 1j * self.A_imag  # (H, N/2)
        B = torch.view_as_complex(self.B)[None]  # (1, H, N/2)
        dtA = A * dt[:, None]  # (H, N/2)
        C = B * C  # (1, H, N/2)
        C = C * (1.0 - dtA / 2).reciprocal() * dt[:, None]
        dA = (1.0 + dtA / 2) / (1.0 - dtA / 2)
        x = dA.log()
        vandermonde = torch.exp(x[..., None] * torch.arange(L).to(x))  # (H, N/2, L)
        return 2 * torch.einsum("chn,hnl->chl", C, vandermonde).real  # (1, H, L)


class _SSKernel(nn.Module):
    """``ss_kernel.SSKernel``: the wrapper that gives the parameters their ``.kernel.`` names."""

    def __init__(self, kernel: _ShiftKernel | _DiagKernel) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, L: int) -> Tensor:
        out: Tensor = self.kernel(L)
        return out


class ReferenceH3(nn.Module):
    """The reference H3 mixer's forward (training path). x: (B, L, D) → (B, L, D)."""

    def __init__(self, d_model: int, d_state: int = 64, head_dim: int = 1) -> None:
        super().__init__()
        if d_model % head_dim or d_state % 2:
            raise ValueError("head_dim must divide d_model and d_state must be even")
        self.d_model, self.head_dim, self.H = d_model, head_dim, d_model // head_dim
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.ssm_k_kernel = _SSKernel(_ShiftKernel(d_model, d_state))
        self.ssm_k_D = nn.Parameter(torch.empty(d_model))
        self.kernel = _SSKernel(_DiagKernel(self.H, d_state))
        self.D = nn.Parameter(torch.empty(self.H))
        self.output_linear = nn.Linear(d_model, d_model)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """The reference's initialisation: projections as ``nn.Linear``, shift B = e₁ and
        taps U(±1/√N), S4D-Lin A = −½ + iπn, B = 1, C ~ CN(0, 1), dt log-uniform in
        [0.001, 0.1], skips N(0, 1)."""
        g = generator
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.output_linear):
            bound = 1 / math.sqrt(lin.in_features)
            lin.weight.copy_((2 * torch.rand(lin.weight.shape, generator=g) - 1) * bound)
            lin.bias.copy_((2 * torch.rand(lin.bias.shape, generator=g) - 1) * bound)
        shift, diag = self.ssm_k_kernel.kernel, self.kernel.kernel
        assert isinstance(shift, _ShiftKernel) and isinstance(diag, _DiagKernel)
        N = shift.B.shape[-1]
        shift.B.zero_()
        shift.B[:, 0] = 1.0
        shift.C.copy_((2 * torch.rand(shift.C.shape, generator=g) - 1) / math.sqrt(N))
        self.ssm_k_D.copy_(torch.randn(self.d_model, generator=g))
        H, n = diag.A_imag.shape
        lo, hi = math.log(0.001), math.log(0.1)
        diag.log_dt.copy_(torch.rand(H, generator=g) * (hi - lo) + lo)
        diag.inv_A_real.fill_(math.log(0.5))
        diag.A_imag.copy_(math.pi * torch.arange(n, dtype=torch.float32).expand(H, n))
        diag.B.zero_()
        diag.B[..., 0] = 1.0
        diag.C.copy_(torch.randn(diag.C.shape, generator=g) * math.sqrt(0.5))
        self.D.copy_(torch.randn(H, generator=g))

    def forward(self, u: Tensor) -> Tensor:
        """u: (B, L, D) → (B, L, D), causal."""
        L, d = u.shape[-2], self.head_dim
        ssm_kernel = rearrange(self.kernel(L), "1 h l -> h l")  # (H, L)
        flat = rearrange(u, "b l h -> (b l) h")  # (B·L, D)
        q, k, v = (
            rearrange(p.weight @ flat.T + p.bias[:, None], "h (b l) -> b h l", l=L)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, D, L) each
        shift_kernel = rearrange(self.ssm_k_kernel(L), "1 h l -> h l")  # (D, L)
        k = fftconv_ref(k, shift_kernel, self.ssm_k_D)  # (B, D, L)
        kv = rearrange(k, "b (h d1) l -> b d1 1 h l", d1=d) * rearrange(
            v, "b (h d2) l -> b 1 d2 h l", d2=d
        )  # (B, d, d, H, L)
        y = fftconv_ref(kv, ssm_kernel, self.D)  # (B, d, d, H, L)
        qh = rearrange(q, "b (h d1) l -> b d1 1 h l", d1=d)
        if d > 1:
            y = rearrange((y * qh).sum(dim=1), "b d h l -> b (d h) l")  # (B, D, L)
        else:
            y = rearrange(y * qh, "b 1 1 h l -> b h l")  # (B, D, L)
        out: Tensor = self.output_linear(rearrange(y, "b h l -> b l h"))  # (B, L, D)
        return out


def reference_from_h3lab(layer: nn.Module, head_dim: int) -> ReferenceH3:
    """A :class:`ReferenceH3` holding the same weights as h3lab's H3 ``layer``
    (``h3_ssm="head"``; see :func:`~h3lab.nn.reference_weights.reference_mixer_state_dict`),
    in the layer's dtype and device."""
    from h3lab.nn.reference_weights import reference_mixer_state_dict

    sd = {k: v.detach() for k, v in layer.state_dict().items()}
    D, N = sd["shift_ssm.C"].shape
    ref = ReferenceH3(D, N, head_dim).to(sd["shift_ssm.C"])
    ref.load_state_dict(reference_mixer_state_dict(sd))
    return ref

"""State-space kernels: the diagonal (S4D) SSM and the shift SSM used by H3.

Both are linear time-invariant maps per channel, ``x_t = Ā x_{t-1} + B̄ u_t``,
``y_t = C x_t + D u_t``, used two ways: in parallel as a causal convolution with the kernel
``K[h, l] = C Ā^l B̄`` (see :mod:`h3lab.nn.fftconv`), and recurrently one step at a time with a
fixed-size state (generation). ``prefill_state`` turns a whole prompt into the state the
recurrence would have reached, so generation need not replay the prompt token by token.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Discretization = Literal["zoh", "bilinear"]
_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _float32_forward(fn: _Fn) -> _Fn:
    """``torch.amp.custom_fwd`` in float32 with autocast off (untyped in torch; keeps ``fn``'s
    signature)."""
    return cast(_Fn, torch.amp.custom_fwd(fn, device_type="cuda", cast_inputs=torch.float32))


def _autocast_backward(fn: _Fn) -> _Fn:
    """``torch.amp.custom_bwd``: the backward runs under the forward's autocast state."""
    return cast(_Fn, torch.amp.custom_bwd(fn, device_type="cuda"))


# --------------------------------------------------------------------------------------------
# Vandermonde products: K[h, l] = 2 Re Σ_n W[h, n] · Ā[h, n]^l
# --------------------------------------------------------------------------------------------


def vandermonde_kernel(W: Tensor, log_A: Tensor, L: int) -> Tensor:
    """``K[h, l] = 2 Re Σ_n W[h, n] · exp(l · log_A[h, n])`` for ``l < L``, fast.

    W, log_A: (H, N) complex. Returns K: (H, L) real. Differentiable in W and log_A.

    A naive broadcast materialises ``Ā^l`` as an (H, N, L) complex tensor — 1 GiB at
    H=256, N=32, L=16k — and its exp dominates the layer's time on CPU. Instead split
    ``l = a·M + b`` with ``M ≈ √L``: ``Ā^l = Ā^{aM} · Ā^b``, so the kernel is one batched real
    matmul of (H, L/M, 2N) by (H, 2N, M), with only (H, N, M + L/M) exponentials. Every power
    is an exp of a multiple of ``log Ā`` (never repeated multiplication), so errors do not
    compound with ``l``. The backward (see :class:`_Vandermonde`) is two more such matmuls.
    """
    apply = cast(Callable[..., Tensor], _Vandermonde.apply)  # Function.apply is untyped
    return apply(W, log_A, L)


class _Vandermonde(torch.autograd.Function):
    """The chunked Vandermonde product with an analytic backward.

    With ``P = W·Ā^{aM}`` (H, N, A), ``I = Ā^b`` (H, N, M) and ``G`` the incoming gradient
    reshaped to (H, A, M): ``∂/∂P = 2 Σ_b G·conj(I)`` and ``∂/∂I = 2 Σ_a G·conj(P)`` are real
    batched matmuls against the tensors the forward already stacked, and the chain to W and
    log Ā is elementwise on (H, N, A + M). Autograd through ``polar`` and complex views did
    the same with several times more kernels and temporaries.
    Gradients follow PyTorch's convention for complex inputs (∂/∂Re + i·∂/∂Im).
    """

    @staticmethod
    @_float32_forward
    def forward(ctx: Any, W: Tensor, log_A: Tensor, L: int) -> Tensor:
        # The kernel is always computed in float32 (autocast off): powers of Ā near the unit
        # circle lose their phase in bf16, and the backward's matmuls need matching dtypes.
        H = W.shape[0]
        M = 1 << max(0, math.ceil(math.log2(max(L, 1)) / 2))  # inner block ≈ √L, a power of 2
        n_outer = -(-L // M)
        real = log_A.real.dtype
        b = torch.arange(M, device=W.device, dtype=real)
        a = torch.arange(n_outer, device=W.device, dtype=real) * M
        Zr, Zi = _powers(log_A, a)  # (H, N, A) each  Ā^{aM}
        Wr, Wi = W.real[..., None], W.imag[..., None]
        # Re(Σ_n P·I) with P = W·Z = Σ_n (Re P · Re I − Im P · Im I): a real matmul over 2N.
        lhs = torch.cat([Wr * Zr - Wi * Zi, (Wr * Zi).add_(Wi * Zr).neg_()], dim=1)  # (H, 2N, A)
        rhs = torch.cat(_powers(log_A, b), dim=1)  # (H, 2N, M) [Re Ā^b ; Im Ā^b]
        K = torch.bmm(lhs.mT, rhs).mul_(2)  # (H, A, M)
        ctx.save_for_backward(Zr, Zi, lhs, rhs, a, b)
        ctx.L = L
        return K.reshape(H, n_outer * M)[:, :L]  # (H, L)

    @staticmethod
    @_autocast_backward
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        # In real arithmetic throughout (complex temporaries cost several times more on CPU):
        # with R = [R1; R2] = rhs·Gᵀ and S = [S1; S2] = lhs·G, the gradients of P and Ā^b are
        # gP = 2(R1 − i R2) and gI = 2(S1 + i S2).
        Zr, Zi, lhs, rhs, a, b = ctx.saved_tensors
        G = G.to(rhs.dtype)
        N, A, M = Zr.shape[1], a.shape[0], b.shape[0]
        G3 = F.pad(G, (0, A * M - ctx.L)).reshape(-1, A, M)  # (H, A, M)
        R = torch.bmm(rhs, G3.mT)  # (H, 2N, A) = [Σ_b G·Re I ; Σ_b G·Im I]
        R1, R2 = R[:, :N], R[:, N:]
        grad_W = grad_log_A = None
        if ctx.needs_input_grad[0]:  # P = W·Z: ∂W = Σ_a gP·conj(Z)
            re = (R1 * Zr).sub_(R2 * Zi).sum(-1)
            im = (R2 * Zr).add_(R1 * Zi).sum(-1)
            grad_W = torch.complex(re, im.neg_()).mul_(2)
        if ctx.needs_input_grad[1]:
            # Z = exp(aM·log Ā) and I = exp(b·log Ā): d/dlog Ā brings down the exponent.
            # Σ_a gP·conj(P)·a with conj(P) = lhs1 + i lhs2, and Σ_b gI·conj(I)·b with
            # conj(I) = rhs1 − i rhs2.
            S = torch.bmm(lhs, G3)  # (H, 2N, M) = [Σ_a G·Re P ; −Σ_a G·Im P]
            S1, S2 = S[:, :N], S[:, N:]
            L1, L2 = lhs[:, :N], lhs[:, N:]
            I1, I2 = rhs[:, :N], rhs[:, N:]
            re = ((R1 * L1).add_(R2 * L2) @ a).add_((S1 * I1).add_(S2 * I2) @ b)
            im = ((R1 * L2).sub_(R2 * L1) @ a).add_((S2 * I1).sub_(S1 * I2) @ b)
            grad_log_A = torch.complex(re, im).mul_(2)
        return grad_W, grad_log_A, None


def _powers(log_A: Tensor, ls: Tensor) -> tuple[Tensor, Tensor]:
    """``exp(l · log_A)`` for each l in ``ls`` as (real, imaginary) parts: (H, N) × (P,) →
    2 × (H, N, P). Built as ``exp(l·Re)·(cos, sin)(l·Im)`` in real arithmetic — on CPU a
    complex ``exp`` is ~7× slower and ``polar`` ~3× slower than these parts."""
    mag = torch.exp(log_A.real[..., None] * ls)
    phase = log_A.imag[..., None] * ls
    re = mag * torch.cos(phase)
    return re, mag.mul_(torch.sin(phase))


def vandermonde_kernel_ref(W: Tensor, A_bar: Tensor, L: int) -> Tensor:
    """Slow reference for :func:`vandermonde_kernel`: a loop of repeated multiplication by
    ``Ā`` (the recurrence itself). W, A_bar: (H, N) complex. Returns (H, L) real."""
    P = torch.ones_like(A_bar)  # Ā^0
    cols = []
    for _ in range(L):
        cols.append(2 * (W * P).sum(-1).real)  # (H,)
        P = P * A_bar
    return torch.stack(cols, dim=-1)  # (H, L)


def discretize(dtA: Tensor, dtB: Tensor, method: Discretization) -> tuple[Tensor, Tensor, Tensor]:
    """Discretise ``x' = A x + B u`` with step ``dt``, given ``dtA = dt·A`` and ``dtB = dt·B``.

    All (H, N) complex. Returns ``(A_bar, log_A_bar, B_bar)``. ZOH: ``Ā = exp(dtA)``,
    ``B̄ = (Ā − 1)/A · B``; bilinear: ``Ā = (1 + dtA/2)/(1 − dtA/2)``, ``B̄ = dtB/(1 − dtA/2)``.
    ``log Ā`` is returned exactly for ZOH (it is ``dtA``) so the fast kernel takes no log.
    """
    if method == "zoh":
        A_bar = torch.exp(dtA)
        return A_bar, dtA, (A_bar - 1) / dtA * dtB
    if method == "bilinear":
        denom = 1 - dtA / 2
        A_bar = (1 + dtA / 2) / denom
        return A_bar, torch.log(A_bar), dtB / denom
    raise ValueError(f"unknown discretization {method!r}")


# --------------------------------------------------------------------------------------------
# Diagonal SSM (S4D)
# --------------------------------------------------------------------------------------------


@dataclass
class DiagonalStepParams:
    """Discretised parameters frozen for the recurrence (all (H, N/2) complex, C doubled so the
    conjugate pair's contribution is ``Re(C2 · x)``)."""

    A_bar: Tensor
    B_bar: Tensor
    C2: Tensor
    D: Tensor  # (H,)


class DiagonalSSM(nn.Module):
    """S4D: a complex diagonal SSM per channel with S4D-Lin initialisation.

    ``channels`` = H independent SSMs, each of state size ``d_state`` = N real dimensions held
    as N/2 complex modes whose conjugates are implicit (hence the ``2 Re``).
    ``A_n = −exp(log_A_real) + i·A_imag`` is initialised to ``−1/2 + iπn`` (S4D-Lin),
    ``dt = exp(log_dt)`` log-uniform in ``[dt_min, dt_max]`` per channel, ``B = 1``,
    ``C ~ CN(0, 1)``, ``D ~ N(0, 1)``. Complex parameters are stored as real (…, 2) tensors so
    every checkpoint format and optimiser handles them.
    """

    def __init__(
        self,
        channels: int,
        d_state: int,
        *,
        discretization: Discretization = "zoh",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        if d_state % 2:
            raise ValueError("d_state must be even (N/2 complex conjugate pairs)")
        self.channels, self.d_state = channels, d_state
        self.discretization: Discretization = discretization
        self.dt_min, self.dt_max = dt_min, dt_max
        n = d_state // 2
        self.log_dt = nn.Parameter(torch.empty(channels))  # (H,)
        self.log_A_real = nn.Parameter(torch.empty(channels, n))  # (H, N/2)
        self.A_imag = nn.Parameter(torch.empty(channels, n))  # (H, N/2)
        self.B = nn.Parameter(torch.empty(channels, n, 2))  # (H, N/2, re/im)
        self.C = nn.Parameter(torch.empty(channels, n, 2))  # (H, N/2, re/im)
        self.D = nn.Parameter(torch.empty(channels))  # (H,)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        H, n = self.log_A_real.shape
        lo, hi = math.log(self.dt_min), math.log(self.dt_max)
        self.log_dt.copy_(torch.rand(H, generator=generator) * (hi - lo) + lo)
        self.log_A_real.fill_(math.log(0.5))
        self.A_imag.copy_(math.pi * torch.arange(n, dtype=torch.float32).expand(H, n))
        self.B.zero_()
        self.B[..., 0] = 1.0
        # CN(0, 1): real and imaginary parts each N(0, 1/2).
        self.C.copy_(torch.randn(H, n, 2, generator=generator) * math.sqrt(0.5))
        self.D.copy_(torch.randn(H, generator=generator))

    def _continuous(self) -> tuple[Tensor, Tensor]:
        """(dt·A, dt·B), each (H, N/2) complex, in the parameters' precision."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)  # (H, N/2)
        dt = torch.exp(self.log_dt)[:, None]  # (H, 1)
        return dt * A, dt * torch.view_as_complex(self.B)

    def discretized(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(W, log_A_bar, A_bar)`` with ``W = C · B̄`` — what every kernel routine needs."""
        dtA, dtB = self._continuous()
        A_bar, log_A_bar, B_bar = discretize(dtA, dtB, self.discretization)
        return torch.view_as_complex(self.C) * B_bar, log_A_bar, A_bar

    def kernel(self, L: int) -> Tensor:
        """The convolution kernel ``K[h, l] = 2 Re Σ_n C B̄ Ā^l``, (H, L) real, computed once
        per forward (it does not depend on the batch)."""
        W, log_A_bar, _ = self.discretized()
        return vandermonde_kernel(W, log_A_bar, L)

    def kernel_ref(self, L: int) -> Tensor:
        """Slow reference for :meth:`kernel` (repeated multiplication)."""
        W, _, A_bar = self.discretized()
        return vandermonde_kernel_ref(W, A_bar, L)

    @torch.no_grad()
    def step_params(self, tile: int = 1) -> DiagonalStepParams:
        """Discretised parameters for :meth:`step`, computed once per generation: the
        recurrence then costs a handful of elementwise ops per token. They are a snapshot —
        allocate a new state after changing the parameters. ``tile`` repeats the H SSMs
        ``tile`` times (channel ``c`` runs SSM ``c mod H``), for inputs of ``tile·H``
        channels that share them (H3's kv channels of one head)."""
        dtA, dtB = self._continuous()
        A_bar, _, B_bar = discretize(dtA, dtB, self.discretization)
        C2 = 2 * torch.view_as_complex(self.C)
        return DiagonalStepParams(
            A_bar=A_bar.repeat(tile, 1),
            B_bar=B_bar.repeat(tile, 1),
            C2=C2.repeat(tile, 1),
            D=self.D.detach().repeat(tile),
        )

    def allocate_state(
        self, batch: int, device: torch.device, dtype: torch.dtype, tile: int = 1
    ) -> Tensor:
        """Zero recurrent state x: (B, tile·H, N/2) complex."""
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        shape = (batch, tile * self.channels, self.d_state // 2)
        return torch.zeros(shape, device=device, dtype=cdtype)

    @staticmethod
    def step(u: Tensor, x: Tensor, p: DiagonalStepParams) -> Tensor:
        """One recurrence step. u: (B, H) real; x: (B, H, N/2) complex state, updated in place.
        Returns y: (B, H) = ``2 Re(C x_t) + D u_t`` with ``x_t = Ā x_{t−1} + B̄ u_t``."""
        x.mul_(p.A_bar).add_(p.B_bar * u[..., None])
        y = torch.linalg.vecdot(p.C2.conj(), x).real  # (B, H); vecdot conjugates its 1st arg
        return torch.addcmul(y, p.D, u)

    @torch.no_grad()
    def prefill_state(self, u: Tensor, x: Tensor, chunk: int = 1024, tile: int = 1) -> None:
        """Set state x (B, H, N/2) to the recurrence's state after consuming u (B, H, L) from
        zero: ``x_L = B̄ · Σ_t Ā^{L−1−t} u_t``, in chunks of t to bound memory. With ``tile``
        (see :meth:`step_params`) u and x have ``tile·H`` channels."""
        dtA, dtB = self._continuous()
        _, log_A_bar, B_bar = discretize(dtA, dtB, self.discretization)
        log_A_bar, B_bar = log_A_bar.repeat(tile, 1), B_bar.repeat(tile, 1)
        L = u.shape[-1]
        x.zero_()
        for start in range(0, L, chunk):
            t = torch.arange(start, min(L, start + chunk), device=u.device)
            powers = torch.exp(log_A_bar[..., None] * (L - 1 - t).to(log_A_bar.real.dtype))
            x.add_(torch.einsum("bht,hnt->bhn", u[..., t].to(x.dtype), powers))  # (B, H, N/2)
        x.mul_(B_bar)


# --------------------------------------------------------------------------------------------
# Shift SSM
# --------------------------------------------------------------------------------------------


class ShiftSSM(nn.Module):
    """The shift SSM: A is the N×N shift matrix and B = e₁, so the state holds the last N
    inputs and the kernel is the learned causal filter ``K[h, l] = C[h, l]`` for ``l < N``
    (zero beyond) — H3's local "remember the previous tokens" memory. Plus a skip ``D``."""

    def __init__(self, channels: int, d_state: int) -> None:
        super().__init__()
        self.channels, self.d_state = channels, d_state
        self.C = nn.Parameter(torch.empty(channels, d_state))  # (H, N) filter taps
        self.D = nn.Parameter(torch.empty(channels))  # (H,)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(
        self, generator: torch.Generator | None = None, *, reference: bool = False
    ) -> None:
        """Taps N(0, 1/N), so the filter's output has the input's variance at init; with
        ``reference``, the reference H3's init: taps U(±1/√N) (``kaiming_uniform_(a=√5)`` on a
        (H, 1, N) tensor, as torch's Conv1d) — the D skip is N(0, 1) either way."""
        if reference:
            bound = 1.0 / math.sqrt(self.d_state)
            u = torch.rand(self.C.shape, generator=generator)
            self.C.copy_((2 * u - 1) * bound)
        else:
            self.C.copy_(torch.randn(self.C.shape, generator=generator) / math.sqrt(self.d_state))
        self.D.copy_(torch.randn(self.channels, generator=generator))

    def kernel(self, L: int) -> Tensor:
        """The filter's support, ``(H, min(N, L))`` — zero taps beyond it are left implicit
        so the FFT can be shorter (see :func:`h3lab.nn.fftconv.fftconv`)."""
        return self.C[:, :L]

    def allocate_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Zero state s: (B, H, N), ``s[..., j] = u_{t−j}`` (the last N inputs, newest first)."""
        return torch.zeros(batch, self.channels, self.d_state, device=device, dtype=dtype)

    def step(self, u: Tensor, s: Tensor) -> Tensor:
        """One step. u: (B, H); s: (B, H, N), updated in place. Returns (B, H)
        ``Σ_j C[h, j] u_{t−j} + D u_t``."""
        s.copy_(s.roll(1, dims=-1))  # shift: the oldest input wraps to slot 0 …
        s[..., 0] = u  # … and is overwritten by the newest
        y = torch.linalg.vecdot(s, self.C)  # (B, H)
        return torch.addcmul(y, self.D, u)

    @torch.no_grad()
    def prefill_state(self, u: Tensor, s: Tensor) -> None:
        """Set s (B, H, N) to the last N inputs of u (B, H, L), newest first."""
        n = min(self.d_state, u.shape[-1])
        s.zero_()
        s[..., :n] = u[..., -n:].flip(-1)

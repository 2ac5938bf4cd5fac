"""The H3 layer (Fu, Dao et al., "Hungry Hungry Hippos", ICLR 2023) and its shift-only ablation.

    q, k, v = x W_q, x W_k, x W_v                       (fused into one projection)
    k̃  = ShiftSSM(k)                                    local memory of recent keys
    kv = k̃ ⊙ v            (head_dim 1) | k̃_h v_hᵀ per head (head_dim > 1)
    s  = DiagonalSSM(kv)   ("h3") | ShiftSSM(kv) ("shift" ablation)
    y  = q ⊙ s            (head_dim 1) | q_hᵀ s_h per head
    out = y W_o

Multi-head (head_dim d > 1), ``H = d_model / d`` heads; channel ``h·d + i`` of q, k, v is
entry i of head h. Two variants (``cfg.h3_ssm``):

``"head"`` (default) — the reference H3 (HazyResearch/H3 ``src/models/ssm/h3.py``): **one**
diagonal SSM per head, shared by the head's d² kv channels, with one skip ``D`` per head.
Channel orders follow the reference exactly, so its weights map one to one: kv channel
``(i·d + j)·H + h`` holds ``k[h·d + i] · v[h·d + j]`` (the reference's ``b d1 d2 h l``), and
output channel ``j·H + h`` is ``Σ_i q[h·d + i] · s[(i·d + j)·H + h]`` (its ``b (d h) l``).

``"channel"`` — h3lab's earlier variant: every kv channel has its own SSM (d² times the
kv-SSM parameters). kv channel ``(h·d + i)·d + j``; output channel ``h·d + j``.

At head_dim 1 both are ``k ⊙ v`` with one SSM per channel, and identical.

Hook points (B = batch, L = length, D = d_model, C = kv channels = D·head_dim):
``hook_q``, ``hook_k``, ``hook_v`` (B, L, D); ``hook_shift_kernel`` (D, min(N, L)) the shift
filter on k; ``hook_shift`` (B, L, D) the shifted keys; ``hook_kv`` (B, L, C);
``hook_kernel`` the kv SSM's kernel per kv channel — (C, L) for the diagonal SSM (in the
``"head"`` variant the head's kernel repeated for each of its channels), (C, min(N, L)) for
the shift ablation; ``hook_diag`` (B, L, C) the kv SSM's output; ``hook_y`` (B, L, D) after the
product with q; ``hook_out`` (B, L, D) after the output projection. Hooks fire in ``forward``
only; ``step`` is the lean generation path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from h3lab.nn.config import LMConfig
from h3lab.nn.fftconv import fftconv
from h3lab.nn.h3core import h3_mix, h3_mix_heads
from h3lab.nn.hooks import HookPoint
from h3lab.nn.layout import linear_from_channels_first, linear_to_channels_first
from h3lab.nn.ssm import DiagonalSSM, DiagonalStepParams, ShiftSSM


@dataclass
class H3State:
    """Fixed-size recurrent state of one H3 layer (independent of context length).

    shift: (B, D, N) the last N keys; kv: the kv SSM's state — (B, C, N/2) complex for the
    diagonal SSM, (B, C, N) real for the shift ablation; params: frozen discretisation of the
    diagonal SSM (None for the ablation); kv_real: (B, C, N) the complex kv state's real view
    (the same memory, interleaved re, im), taken once for the fused step — so ``kv`` is only
    ever updated in place (prefill and both steps do); to start over, allocate a new state."""

    shift: Tensor
    kv: Tensor
    params: DiagonalStepParams | None
    fused: H3StepParams | None = None  # set when :meth:`H3.step` can take its fused path
    kv_real: Tensor | None = None


@dataclass(frozen=True)
class H3StepParams:
    """What the fused step of a head_dim-1 H3 with a diagonal kv SSM reads, snapshotted with
    the state (like :class:`DiagonalStepParams`: allocate a new state after changing weights).

    taps: (D, N) the shift SSM's filter with its skip D folded into tap 0 (the newest input);
    A_bar: (D, N/2) complex; B_pairs: (D, N) B̄ as interleaved (re, im), so ``B̄ u`` for a real
    u is one real multiply-add into the state's real view; C_pairs: (D, N) conj(2C) as
    interleaved (re, im), so ``Re(2C · x)`` is one real dot with that view; D: (D,) the kv
    SSM's skip; w_in, b_in, w_out, b_out: the projections' own parameters (not copies: an
    in-place update is seen); hooks: the projections' forward and forward-pre hook registries
    and the global ones — the live dicts, which registering a hook fills, so the step can see
    in one ``any`` that a hook would need the modules called."""

    taps: Tensor
    A_bar: Tensor
    B_pairs: Tensor
    C_pairs: Tensor
    D: Tensor
    w_in: Tensor
    b_in: Tensor
    w_out: Tensor
    b_out: Tensor
    hooks: tuple[dict[Any, Any], ...]


class H3(nn.Module):
    """One H3 mixer. ``kv_ssm="diag"`` is H3; ``"shift"`` is the shift-only ablation."""

    def __init__(self, cfg: LMConfig, *, kv_ssm: Literal["diag", "shift"] = "diag") -> None:
        super().__init__()
        D, d = cfg.d_model, cfg.head_dim
        self.d_model, self.head_dim, self.n_heads = D, d, D // d
        self.kv_channels = D * d
        # "head": the reference layout (one SSM per head, shared by its d² kv channels).
        self.shared = cfg.h3_ssm == "head" and kv_ssm == "diag"
        self.tile = d * d if self.shared else 1  # kv channels per SSM
        self.in_proj = nn.Linear(D, 3 * D)  # q, k, v fused: one matmul
        self.shift_ssm = ShiftSSM(D, cfg.d_state)
        self.kv_ssm: DiagonalSSM | ShiftSSM
        if kv_ssm == "diag":
            self.kv_ssm = DiagonalSSM(
                self.kv_channels // self.tile,
                cfg.d_state,
                discretization=cfg.discretization,
                dt_min=cfg.dt_min,
                dt_max=cfg.dt_max,
            )
        elif kv_ssm == "shift":
            self.kv_ssm = ShiftSSM(self.kv_channels, cfg.d_state)
        else:
            raise ValueError(f"unknown kv_ssm {kv_ssm!r}")
        self.out_proj = nn.Linear(D, D)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_shift_kernel, self.hook_shift = HookPoint(), HookPoint()
        self.hook_kv, self.hook_kernel, self.hook_diag = HookPoint(), HookPoint(), HookPoint()
        self.hook_y, self.hook_out = HookPoint(), HookPoint()
        # Use the fused path (h3lab.nn.h3core) when it applies; False forces the composed
        # ops, its slow reference.
        self.fuse = True

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None, n_layer: int = 1) -> None:
        std = 0.02
        for lin, s in ((self.in_proj, std), (self.out_proj, std / math.sqrt(2 * n_layer))):
            lin.weight.normal_(0.0, s, generator=generator)
            lin.bias.zero_()
        self.shift_ssm.reset_parameters(generator, reference=self.shared)
        self.kv_ssm.reset_parameters(generator)

    # ---------------------------------------------------------------- parallel (training) mode

    def forward(self, x: Tensor, state: H3State | None = None) -> Tensor:
        """x: (B, L, D) → (B, L, D), causal. With ``state`` (fresh, from
        :meth:`allocate_state`) also leave in it the recurrent state after the sequence
        (prefill), so :meth:`step` can continue from there."""
        L = x.shape[1]
        # Channels-first (B, 3D, L) straight out of the GEMM: the FFTs then run over
        # contiguous rows, with no transpose copy of q, k, v.
        qkv = linear_to_channels_first(x, self.in_proj.weight, self.in_proj.bias)  # (B, 3D, L)
        if state is None and self._can_fuse(qkv):
            assert isinstance(self.kv_ssm, DiagonalSSM)
            kernels = (self.shift_ssm.kernel(L), self.shift_ssm.D, self.kv_ssm.kernel(L))
            y = (
                h3_mix(qkv, *kernels, self.kv_ssm.D)
                if self.head_dim == 1
                else h3_mix_heads(qkv, *kernels, self.kv_ssm.D, self.head_dim)
            )  # (B, D, L)
            fused: Tensor = self.hook_out(
                linear_from_channels_first(y, self.out_proj.weight, self.out_proj.bias)
            )
            return fused  # (B, L, D)
        q, k, v = qkv.chunk(3, dim=1)  # (B, D, L) each
        q = self.hook_q(q.mT).mT
        k = self.hook_k(k.mT).mT
        v = self.hook_v(v.mT).mT

        shift_kernel = self.hook_shift_kernel(self.shift_ssm.kernel(L))  # (D, ≤N)
        k_shift = fftconv(k, shift_kernel, self.shift_ssm.D)  # (B, D, L)
        k_shift = self.hook_shift(k_shift.mT).mT

        kv = self._outer(k_shift, v)  # (B, C, L)
        kv = self.hook_kv(kv.mT).mT
        kernel = self.kv_ssm.kernel(L)  # (C / tile, L) or (C, ≤N)
        kernel = self.hook_kernel(kernel.repeat(self.tile, 1))  # (C, ·): channel c → SSM c mod H
        s = fftconv(kv, kernel, self.kv_ssm.D.repeat(self.tile))  # (B, C, L)
        s = self.hook_diag(s.mT).mT

        y = self._contract(q, s)  # (B, D, L)
        y = self.hook_y(y.mT).mT  # (B, D, L)
        out = linear_from_channels_first(y, self.out_proj.weight, self.out_proj.bias)
        out = self.hook_out(out)  # (B, L, D)
        assert isinstance(out, Tensor)
        if state is not None:
            self.shift_ssm.prefill_state(k, state.shift)
            if isinstance(self.kv_ssm, DiagonalSSM):
                self.kv_ssm.prefill_state(kv, state.kv, tile=self.tile)
            else:
                self.kv_ssm.prefill_state(kv, state.kv)
        return out

    def _can_fuse(self, qkv: Tensor) -> bool:
        """Whether :mod:`h3lab.nn.h3core` may replace the composed ops: the diagonal SSM at
        head_dim 1 or with one SSM per head, float32/64, and no hook inside the layer that
        would need to see (or replace) an intermediate the fused function never forms."""
        if not isinstance(self.kv_ssm, DiagonalSSM) or not self.fuse:
            return False
        if self.head_dim > 1 and not self.shared:
            return False
        if qkv.dtype not in (torch.float32, torch.float64):
            return False
        inner = (
            self.hook_q,
            self.hook_k,
            self.hook_v,
            self.hook_shift_kernel,
            self.hook_shift,
            self.hook_kv,
            self.hook_kernel,
            self.hook_diag,
            self.hook_y,
        )
        return not any(h.active for h in inner) and not nn.modules.module._global_forward_hooks

    def _outer(self, k: Tensor, v: Tensor) -> Tensor:
        """kv channels from k, v (B, D, ·): elementwise for head_dim 1, else per-head outer
        product in the (h, i, j) channel order of the module docstring. Works for any trailing
        length, including the single step (B, D, 1)."""
        if self.head_dim == 1:
            return k * v
        d = self.head_dim
        if self.shared:  # the reference's b d1 d2 h l
            kh = rearrange(k, "b (h i) l -> b i 1 h l", i=d)
            vh = rearrange(v, "b (h j) l -> b 1 j h l", j=d)
            return rearrange(kh * vh, "b i j h l -> b (i j h) l")  # (B, C, L)
        kh = rearrange(k, "b (h i) l -> b h i 1 l", i=d)
        vh = rearrange(v, "b (h j) l -> b h 1 j l", j=d)
        return rearrange(kh * vh, "b h i j l -> b (h i j) l")  # (B, C, L)

    def _contract(self, q: Tensor, s: Tensor) -> Tensor:
        """y (B, D, ·) from q (B, D, ·) and kv-SSM output s (B, C, ·): ``y_h = q_hᵀ s_h``."""
        if self.head_dim == 1:
            return q * s
        d = self.head_dim
        if self.shared:  # the reference's output order b (d2 h) l
            qh = rearrange(q, "b (h i) l -> b i 1 h l", i=d)
            sh = rearrange(s, "b (i j h) l -> b i j h l", i=d, j=d)
            return rearrange((qh * sh).sum(1), "b j h l -> b (j h) l")  # (B, D, L)
        qh = rearrange(q, "b (h i) l -> b h i 1 l", i=d)
        sh = rearrange(s, "b (h i j) l -> b h i j l", i=d, j=d)
        return rearrange((qh * sh).sum(2), "b h j l -> b (h j) l")  # (B, D, L)

    # -------------------------------------------------------------- recurrent (generation) mode

    def allocate_state(
        self,
        batch: int,
        max_len: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> H3State:
        """Zero state for ``batch`` sequences. Its size does not depend on ``max_len``
        (accepted for symmetry with attention's KV cache)."""
        p = self.in_proj.weight
        device = torch.device(device) if device is not None else p.device
        dtype = dtype or p.dtype
        fused = None
        if isinstance(self.kv_ssm, DiagonalSSM):
            params = self.kv_ssm.step_params(self.tile)
            kv = self.kv_ssm.allocate_state(batch, device, dtype, self.tile)
            if self.head_dim == 1:
                fused = self._fused_step_params(params)
        else:
            params, kv = None, self.kv_ssm.allocate_state(batch, device, dtype)
        return H3State(
            shift=self.shift_ssm.allocate_state(batch, device, dtype),
            kv=kv,
            params=params,
            fused=fused,
            kv_real=torch.view_as_real(kv).flatten(-2) if fused is not None else None,
        )

    @torch.no_grad()
    def _fused_step_params(self, p: DiagonalStepParams) -> H3StepParams:
        taps = self.shift_ssm.C.detach().clone()  # (D, N)
        taps[:, 0] += self.shift_ssm.D.detach()  # Σ_j C_j k_{t−j} + D k_t in one dot
        return H3StepParams(
            taps=taps,
            A_bar=p.A_bar,
            B_pairs=torch.view_as_real(p.B_bar).flatten(-2).contiguous(),
            C_pairs=torch.view_as_real(p.C2.conj().resolve_conj()).flatten(-2).contiguous(),
            D=p.D,
            w_in=self.in_proj.weight,
            b_in=self.in_proj.bias,
            w_out=self.out_proj.weight,
            b_out=self.out_proj.bias,
            hooks=(
                self.in_proj._forward_hooks,
                self.in_proj._forward_pre_hooks,
                self.out_proj._forward_hooks,
                self.out_proj._forward_pre_hooks,
                nn.modules.module._global_forward_hooks,
                nn.modules.module._global_forward_pre_hooks,
            ),
        )

    def step(self, x: Tensor, state: H3State) -> Tensor:
        """One token. x: (B, D) → (B, D); ``state`` advances. Equals the matching row of
        :meth:`forward` over the whole sequence, and :meth:`step_reference`.

        At head_dim 1 with the diagonal kv SSM this is the fused path: generation at batch 1
        is bound by the number of tensor ops (a few µs of dispatch each) more than by
        arithmetic, so it takes 11 where the reference takes ~20 — the shift register
        advanced by one ``cat`` (the new buffer replaces ``state.shift``), the shift SSM's
        skip folded into its taps, ``B̄ u`` and ``Re(2C x)`` as real ops on the complex
        state's real view (no complex promotion of u, no conjugate) — and calls the
        projections' ``F.linear`` and the tensors' methods directly (no module call, no
        Python indexing). A hook on either projection sends the step to the reference,
        which calls the modules, so the hook sees every token."""
        f, xr = state.fused, state.kv_real
        if f is None or xr is None or any(f.hooks):
            return self.step_reference(x, state)
        q, k, v = F.linear(x, f.w_in, f.b_in).chunk(3, -1)  # (B, D) each
        old = state.shift
        shift = torch.cat((k.unsqueeze(-1), old.narrow(-1, 0, old.shape[-1] - 1)), -1)
        state.shift = shift  # (B, D, N) newest first
        kv = torch.linalg.vecdot(shift, f.taps).mul_(v)  # (B, D) shift SSM, then ⊙ v
        state.kv.mul_(f.A_bar)  # (B, D, N/2) complex, in place; xr is its real view
        xr.addcmul_(f.B_pairs, kv.unsqueeze(-1))  # + B̄ u
        s = torch.linalg.vecdot(xr, f.C_pairs)  # Re(2C x)
        y = torch.addcmul(s, f.D, kv).mul_(q)  # (B, D): (kv SSM + skip) ⊙ q
        return F.linear(y, f.w_out, f.b_out)

    def step_reference(self, x: Tensor, state: H3State) -> Tensor:
        """:meth:`step` composed from the SSMs' own steps (any head_dim, either kv SSM); the
        slow reference for the fused path. ``state`` advances in place."""
        q, k, v = self.in_proj(x).chunk(3, dim=-1)  # (B, D) each
        k = self.shift_ssm.step(k, state.shift)
        kv = k * v if self.head_dim == 1 else self._outer(k[..., None], v[..., None])[..., 0]
        if state.params is not None:
            s = DiagonalSSM.step(kv, state.kv, state.params)
        else:
            assert isinstance(self.kv_ssm, ShiftSSM)
            s = self.kv_ssm.step(kv, state.kv)
        y = q * s if self.head_dim == 1 else self._contract(q[..., None], s[..., None])[..., 0]
        out: Tensor = self.out_proj(y)
        return out

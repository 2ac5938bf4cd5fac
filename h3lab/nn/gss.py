"""The gated state space layer, GSS (Mehta, Gupta, Cutkosky, Neyshabur, "Long Range Language
Modeling via Gated State Spaces", 2022, Figure 1) — a row of the H3 paper's synthetic table.

    v = GELU(x W_v)          (B, L, F)   F = gss_expand · D   gate branch
    u = GELU(x W_u)          (B, L, H)   H = max(1, D / 4)    the SSM's narrow input
    y = DiagonalSSM(u)       (B, L, H)   with D skip
    o = ((y W_y) ⊙ v) W_o    (B, L, D)

The paper's F = 4096, H = 256 at E = D = 1024 give the ratios used here (F = 4D, H = D/4).
The block around it (pre-norm, residual) is :class:`h3lab.nn.lm.Block`'s, as for every mixer.
Deviation, named: the paper's SSM is DSS; here it is h3lab's diagonal SSM (S4D-Lin
initialisation, ``cfg.discretization``) — the same diagonal state space family, with the
parameterisation the H3 and S4D rows use.

Hook points (B, L as usual): ``hook_v`` (B, L, F), ``hook_u`` (B, L, H), ``hook_kernel``
(H, L), ``hook_diag`` (B, L, H) the SSM output, ``hook_out`` (B, L, D). Forward only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from h3lab.nn.config import LMConfig
from h3lab.nn.fftconv import fftconv
from h3lab.nn.hooks import HookPoint
from h3lab.nn.ssm import DiagonalSSM, DiagonalStepParams


@dataclass
class GSSState:
    """x: (B, H, N/2) complex SSM state; params: frozen discretisation."""

    x: Tensor
    params: DiagonalStepParams


class GSS(nn.Module):
    """One GSS mixer over d_model channels."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        D = cfg.d_model
        self.d_model, self.d_ff, self.d_ssm = D, cfg.gss_expand * D, max(1, D // 4)
        self.v_proj = nn.Linear(D, self.d_ff)
        self.u_proj = nn.Linear(D, self.d_ssm)
        self.ssm = DiagonalSSM(
            self.d_ssm,
            cfg.d_state,
            discretization=cfg.discretization,
            dt_min=cfg.dt_min,
            dt_max=cfg.dt_max,
        )
        self.y_proj = nn.Linear(self.d_ssm, self.d_ff)
        self.out_proj = nn.Linear(self.d_ff, D)
        self.hook_v, self.hook_u, self.hook_kernel = HookPoint(), HookPoint(), HookPoint()
        self.hook_diag, self.hook_out = HookPoint(), HookPoint()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None, n_layer: int = 1) -> None:
        std = 0.02
        for lin in (self.v_proj, self.u_proj, self.y_proj):
            lin.weight.normal_(0.0, std, generator=generator)
            lin.bias.zero_()
        self.out_proj.weight.normal_(0.0, std / math.sqrt(2 * n_layer), generator=generator)
        self.out_proj.bias.zero_()
        self.ssm.reset_parameters(generator)

    def forward(self, x: Tensor, state: GSSState | None = None) -> Tensor:
        """x: (B, L, D) → (B, L, D), causal; with ``state``, also prefill it."""
        L = x.shape[1]
        v = self.hook_v(F.gelu(self.v_proj(x)))  # (B, L, F)
        u = self.hook_u(F.gelu(self.u_proj(x)))  # (B, L, H)
        kernel = self.hook_kernel(self.ssm.kernel(L))  # (H, L)
        u_cf = u.mT.contiguous()  # (B, H, L)
        y = self.hook_diag(fftconv(u_cf, kernel, self.ssm.D).mT)  # (B, L, H)
        out: Tensor = self.hook_out(self.out_proj(self.y_proj(y) * v))  # (B, L, D)
        if state is not None:
            self.ssm.prefill_state(u_cf, state.x)
        return out

    def allocate_state(
        self,
        batch: int,
        max_len: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> GSSState:
        p = self.u_proj.weight
        device = torch.device(device) if device is not None else p.device
        return GSSState(
            x=self.ssm.allocate_state(batch, device, dtype or p.dtype),
            params=self.ssm.step_params(),
        )

    def step(self, x: Tensor, state: GSSState) -> Tensor:
        """One token. x: (B, D) → (B, D); state advances in place."""
        v = F.gelu(self.v_proj(x))  # (B, F)
        y = DiagonalSSM.step(F.gelu(self.u_proj(x)), state.x, state.params)  # (B, H)
        out: Tensor = self.out_proj(self.y_proj(y) * v)
        return out

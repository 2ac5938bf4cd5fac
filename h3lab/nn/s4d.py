"""The plain S4D layer — the H3 paper's S4D baseline mixer.

    u = x W_in;  s = DiagonalSSM(u) (with D skip);  out = GELU(s) W_out

Hook points: ``hook_in`` (B, L, D) after the input projection, ``hook_kernel`` (D, L),
``hook_diag`` (B, L, D) the SSM output, ``hook_out`` (B, L, D). Hooks fire in ``forward`` only.
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
from h3lab.nn.layout import linear_to_channels_first
from h3lab.nn.ssm import DiagonalSSM, DiagonalStepParams


@dataclass
class S4DState:
    """x: (B, D, N/2) complex SSM state; params: frozen discretisation."""

    x: Tensor
    params: DiagonalStepParams


class S4D(nn.Module):
    """One S4D mixer over d_model channels."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        D = cfg.d_model
        self.in_proj = nn.Linear(D, D)
        self.ssm = DiagonalSSM(
            D,
            cfg.d_state,
            discretization=cfg.discretization,
            dt_min=cfg.dt_min,
            dt_max=cfg.dt_max,
        )
        self.out_proj = nn.Linear(D, D)
        self.hook_in, self.hook_kernel = HookPoint(), HookPoint()
        self.hook_diag, self.hook_out = HookPoint(), HookPoint()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None, n_layer: int = 1) -> None:
        for lin, s in ((self.in_proj, 0.02), (self.out_proj, 0.02 / math.sqrt(2 * n_layer))):
            lin.weight.normal_(0.0, s, generator=generator)
            lin.bias.zero_()
        self.ssm.reset_parameters(generator)

    def forward(self, x: Tensor, state: S4DState | None = None) -> Tensor:
        """x: (B, L, D) → (B, L, D), causal; with ``state``, also prefill it."""
        L = x.shape[1]
        u = linear_to_channels_first(x, self.in_proj.weight, self.in_proj.bias)  # (B, D, L)
        u = self.hook_in(u.mT).mT
        kernel = self.hook_kernel(self.ssm.kernel(L))  # (D, L)
        s = self.hook_diag(fftconv(u, kernel, self.ssm.D).mT)  # (B, L, D)
        out: Tensor = self.hook_out(self.out_proj(F.gelu(s)))  # (B, L, D)
        if state is not None:
            self.ssm.prefill_state(u, state.x)
        return out

    def allocate_state(
        self,
        batch: int,
        max_len: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> S4DState:
        p = self.in_proj.weight
        device = torch.device(device) if device is not None else p.device
        return S4DState(
            x=self.ssm.allocate_state(batch, device, dtype or p.dtype),
            params=self.ssm.step_params(),
        )

    def step(self, x: Tensor, state: S4DState) -> Tensor:
        """One token. x: (B, D) → (B, D); state advances in place."""
        s = DiagonalSSM.step(self.in_proj(x), state.x, state.params)
        out: Tensor = self.out_proj(F.gelu(s))
        return out

"""Causal multi-head softmax attention with rotary positions and a KV cache.

``cfg.attn_rotary=False`` drops the rotary rotation (the reference LMs' attention has none:
safari's synthetic baseline takes learned positions from the embeddings instead), and
``cfg.attn_dropout`` drops attention weights while training.

Rotary position embeddings (RoFormer, GPT-NeoX "rotate half" layout) make the layer work at any
length — there is no position table. The parallel path calls
``scaled_dot_product_attention(is_causal=True)``, which never forms the attention matrix; it is
computed explicitly only when something listens on ``hook_pattern``.

Hook points: ``hook_q``, ``hook_k`` (B, n_head, L, head_dim) after the rotation, ``hook_v``
(B, n_head, L, head_dim), ``hook_pattern`` (B, n_head, L, L) softmax weights (query, key),
``hook_z`` (B, L, D) heads concatenated before the output projection, ``hook_out`` (B, L, D).
Hooks fire in ``forward`` only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from h3lab.nn.config import LMConfig
from h3lab.nn.hooks import HookPoint


def rotary_tables(
    positions: Tensor, head_dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """cos, sin tables (len(positions), head_dim/2) for rotary embeddings."""
    inv_freq = base ** (
        -torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim
    )
    angles = positions.to(torch.float64)[:, None] * inv_freq[None]  # (L, hd/2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., i], x[..., i + hd/2]) by the position's angle.
    x: (..., L, hd); cos, sin: (L, hd/2) broadcastable."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@dataclass
class AttentionState:
    """KV cache for one attention layer. k, v: (B, n_head, max_len, head_dim); cos, sin:
    (max_len, head_dim/2) rotary tables; pos: tokens cached so far."""

    k: Tensor
    v: Tensor
    cos: Tensor
    sin: Tensor
    pos: int = 0


class Attention(nn.Module):
    """Causal multi-head attention over d_model with cfg.n_head heads."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        D, nh = cfg.d_model, cfg.n_head
        if D % nh:
            raise ValueError("n_head must divide d_model")
        self.d_model, self.n_head, self.head_dim = D, nh, D // nh
        self.rotary, self.attn_dropout = cfg.attn_rotary, cfg.attn_dropout
        if self.rotary and self.head_dim % 2:
            raise ValueError("rotary embeddings need an even head dimension")
        self.in_proj = nn.Linear(D, 3 * D)
        self.out_proj = nn.Linear(D, D)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_pattern, self.hook_z, self.hook_out = HookPoint(), HookPoint(), HookPoint()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None, n_layer: int = 1) -> None:
        for lin, s in ((self.in_proj, 0.02), (self.out_proj, 0.02 / math.sqrt(2 * n_layer))):
            lin.weight.normal_(0.0, s, generator=generator)
            lin.bias.zero_()

    def forward(self, x: Tensor, state: AttentionState | None = None) -> Tensor:
        """x: (B, L, D) → (B, L, D), causal. With ``state`` (fresh), also fill its KV cache
        with the sequence (prefill)."""
        L = x.shape[1]
        qkv = rearrange(self.in_proj(x), "b l (t h d) -> t b h l d", t=3, h=self.n_head)
        q, k, v = qkv.unbind(0)  # (B, nh, L, hd) each
        if self.rotary:
            cos, sin = rotary_tables(torch.arange(L, device=x.device), self.head_dim, dtype=x.dtype)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        p_drop = self.attn_dropout if self.training else 0.0
        if self.hook_pattern.active:
            scores = (q @ k.mT) / math.sqrt(self.head_dim)  # (B, nh, L, L)
            mask = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
            pattern = self.hook_pattern(scores.masked_fill(~mask, float("-inf")).softmax(-1))
            z = F.dropout(pattern, p_drop) @ v  # (B, nh, L, hd)
        else:
            z = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, is_causal=True)
        z = self.hook_z(rearrange(z, "b h l d -> b l (h d)"))  # (B, L, D)
        if state is not None:
            if state.pos != 0:
                raise ValueError("prefill needs a fresh state")
            if state.k.shape[2] < L:
                raise ValueError(f"sequence of {L} exceeds the cache's max_len")
            state.k[:, :, :L] = k
            state.v[:, :, :L] = v
            state.pos = L
        out: Tensor = self.hook_out(self.out_proj(z))
        return out

    def allocate_state(
        self,
        batch: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> AttentionState:
        """An empty KV cache for ``batch`` sequences of up to ``max_len`` tokens."""
        p = self.in_proj.weight
        device = torch.device(device) if device is not None else p.device
        dtype = dtype or p.dtype
        shape = (batch, self.n_head, max_len, self.head_dim)
        cos, sin = rotary_tables(torch.arange(max_len, device=device), self.head_dim, dtype=dtype)
        return AttentionState(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            cos=cos,
            sin=sin,
        )

    def step(self, x: Tensor, state: AttentionState) -> Tensor:
        """One token. x: (B, D) → (B, D); appends to the KV cache."""
        t = state.pos
        if t >= state.k.shape[2]:
            raise ValueError(f"KV cache full ({t} tokens)")
        qkv = rearrange(self.in_proj(x), "b (t h d) -> t b h 1 d", t=3, h=self.n_head)
        q, k, v = qkv.unbind(0)  # (B, nh, 1, hd)
        if self.rotary:
            cos, sin = state.cos[t : t + 1], state.sin[t : t + 1]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        state.k[:, :, t : t + 1] = k
        state.v[:, :, t : t + 1] = v
        state.pos = t + 1
        z = F.scaled_dot_product_attention(
            q, state.k[:, :, : t + 1], state.v[:, :, : t + 1]
        )  # (B, nh, 1, hd): the new query attends to every cached key, so no mask
        out: Tensor = self.out_proj(rearrange(z, "b h 1 d -> b (h d)"))
        return out

"""What a run will cost, from its config alone: parameters, peak training memory, compute.

Pure arithmetic on :class:`h3lab.config.RunConfig` (no torch, no Django), so the platform can
refuse a run before any model is built. ``parameters`` is exact (``tests/ml/test_estimate.py``
checks it against ``sum(p.numel())`` of built models); memory and compute are deliberately
conservative upper-bound estimates, float32 throughout (bf16 autocast on a GPU only lowers
them).

Peak memory (bytes), with B = batch, L = seq_len, D = d_model, C = D·head_dim (H3's kv
channels), V = vocab, r = mlp_ratio, P = parameters::

    weights   = 16·P                    params + grads + AdamW's two moments, 4 B each
    kernels   = Σ_ssm-layers 4·4·C_l·L  each SSM kernel (C, L) and its FFT, with gradients
    train     = 4·B·L·(Σ_layers a_l + 3V + 2D)   activations kept for backward, plus the
                                                 logits, their softmax and gradient
    evaluate  = 4·4B·L·(max_l a_l + 3V)          no-grad evaluation at batch 4B, one layer live
    peak      = weights + kernels + max(train, evaluate)

where the floats kept per token by one layer are ``a_l = 4D + (2D + 2rD if r else 0)`` for the
block (residual, norms, MLP) plus the mixer's: H3 ``12D + 10C`` (q, k, v, the shift conv's
padded FFT, kv, the kv conv's padded FFT, s, y, out), S4D ``12D``, attention
``8D + n_head·L`` (q, k, v, rotated copies, z, out, and the (L × L) weights per head should
SDPA fall back to its math kernel).

Compute (FLOPs) for the run's ``steps`` × B × L training tokens T::

    6·P·T                                     matmuls forward and backward (Kaplan et al.)
    + Σ_attn-layers 6·L·D·T                   scores and weighted sum, forward and backward
    + Σ_ssm-layers 3·30·log2(2L)·channels·T   FFT convolutions (three length-2L FFTs of
                                              ≈ 5·n·log2 n each), forward and backward
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from h3lab.config import RunConfig
from h3lab.nn.config import LMConfig

FLOAT_BYTES = 4
ADAM_BYTES_PER_PARAM = 4 * FLOAT_BYTES  # weight, gradient, exp_avg, exp_avg_sq


@dataclass(frozen=True)
class Estimate:
    """A run's cost: exact ``parameters``; ``memory_bytes`` its estimated peak training memory
    (``weights_bytes`` of it for parameters, gradients and optimiser state, the rest
    activations); ``flops`` for the whole run's training steps."""

    parameters: int
    memory_bytes: int
    weights_bytes: int
    activation_bytes: int
    flops: int

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / 2**30

    def summary(self) -> str:
        """One line for people: ``≈ 1.2 M params, ≈ 0.05 GiB, ≈ 340 GFLOP``."""
        return (
            f"≈ {human_count(self.parameters)} params, ≈ {self.memory_gib:.2f} GiB, "
            f"≈ {self.flops / 1e9:,.0f} GFLOP"
        )


def human_count(n: int) -> str:
    """12345678 → '12.3 M'."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return str(n)


def diagonal_ssm_parameters(channels: int, d_state: int) -> int:
    """:class:`h3lab.nn.ssm.DiagonalSSM`: log_dt, D (H); log_A_real, A_imag (H, N/2);
    B, C (H, N/2, 2)."""
    return channels * (3 * d_state + 2)


def shift_ssm_parameters(channels: int, d_state: int) -> int:
    """:class:`h3lab.nn.ssm.ShiftSSM`: taps C (H, N) and D (H)."""
    return channels * (d_state + 1)


def linear_parameters(d_in: int, d_out: int, bias: bool = True) -> int:
    return d_in * d_out + (d_out if bias else 0)


def mixer_parameters(kind: str, cfg: LMConfig) -> int:
    """Parameters of one mixer of ``kind`` (see :mod:`h3lab.nn.config`)."""
    D, N = cfg.d_model, cfg.d_state
    C = D * cfg.head_dim
    projections = linear_parameters(D, 3 * D) + linear_parameters(D, D)
    if kind == "h3":
        # The reference H3 ("head") has one kv SSM per head; the "channel" variant one per kv
        # channel.
        kv = D // cfg.head_dim if cfg.h3_ssm == "head" else C
        return projections + shift_ssm_parameters(D, N) + diagonal_ssm_parameters(kv, N)
    if kind == "shift":
        return projections + shift_ssm_parameters(D, N) + shift_ssm_parameters(C, N)
    if kind == "attn":
        return projections
    if kind == "s4d":
        return 2 * linear_parameters(D, D) + diagonal_ssm_parameters(D, N)
    if kind == "gss":
        F, H = cfg.gss_expand * D, max(1, D // 4)
        return (
            linear_parameters(D, F)
            + linear_parameters(D, H)
            + diagonal_ssm_parameters(H, N)
            + linear_parameters(H, F)
            + linear_parameters(F, D)
        )
    raise ValueError(f"unknown mixer {kind!r}")


def parameters(cfg: LMConfig) -> int:
    """Exactly ``sum(p.numel() for p in LanguageModel(cfg).parameters())``."""
    D, r = cfg.d_model, cfg.mlp_ratio
    block = 2 * D  # ln_mixer
    if r:
        block += 2 * D + linear_parameters(D, r * D) + linear_parameters(r * D, D)
    total = cfg.vocab_size * D + 2 * D  # embedding, final norm
    if cfg.pos_embed == "learned":
        total += cfg.max_len * D
    if not cfg.tie_embeddings:
        total += cfg.vocab_size * D
    return total + sum(block + mixer_parameters(kind, cfg) for kind in cfg.mixers)


def _layer_floats(kind: str, cfg: LMConfig, seq_len: int) -> int:
    """Floats one layer keeps per token for the backward pass (see the module docstring)."""
    D, r = cfg.d_model, cfg.mlp_ratio
    C = D * cfg.head_dim
    block = 4 * D + (2 * D + 2 * r * D if r else 0)
    if kind in ("h3", "shift"):
        return block + 12 * D + 10 * C
    if kind == "s4d":
        return block + 12 * D
    if kind == "gss":
        F, H = cfg.gss_expand * D, max(1, D // 4)
        return block + 4 * F + 12 * H
    return block + 8 * D + cfg.n_head * seq_len  # attn


def _ssm_channels(kind: str, cfg: LMConfig) -> int:
    """Channels convolved by FFT in one layer (0 for attention)."""
    if kind in ("h3", "shift"):
        return cfg.d_model * (1 + cfg.head_dim)
    if kind == "gss":
        return max(1, cfg.d_model // 4)
    return cfg.d_model if kind == "s4d" else 0


def estimate(cfg: RunConfig) -> Estimate:
    """The cost of training ``cfg``; see the module docstring for the formulas."""
    m, B, L = cfg.model, cfg.train.batch_size, cfg.task.input_len
    P = parameters(m)
    weights = ADAM_BYTES_PER_PARAM * P
    kernels = sum(4 * FLOAT_BYTES * m.d_model * m.head_dim * L for k in m.mixers if k != "attn")
    per_layer = [_layer_floats(k, m, L) for k in m.mixers]
    V, D = m.vocab_size, m.d_model
    train = FLOAT_BYTES * B * L * (sum(per_layer) + 3 * V + 2 * D)
    evaluate = FLOAT_BYTES * 4 * B * L * (max(per_layer) + 3 * V)
    activations = kernels + max(train, evaluate)

    tokens = cfg.train.steps * B * L
    per_token = 6 * P
    for kind in m.mixers:
        if kind == "attn":
            per_token += 6 * L * D
        else:
            per_token += 90 * math.ceil(math.log2(2 * L)) * _ssm_channels(kind, m)
    return Estimate(
        parameters=P,
        memory_bytes=weights + activations,
        weights_bytes=weights,
        activation_bytes=activations,
        flops=per_token * tokens,
    )

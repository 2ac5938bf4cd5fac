"""Model configuration: one frozen dataclass and the mixer presets.

A language model is a stack of pre-norm residual blocks, each a *mixer* (sequence mixing)
followed by an MLP. The per-layer mixer list is the model's architecture:

    ``"h3"``    H3 layer: shift SSM on k, k ⊙ v, diagonal SSM, ⊙ q (Fu, Dao et al., 2023)
    ``"attn"``  causal multi-head softmax attention (SDPA, rotary positions, KV cache)
    ``"s4d"``   plain S4D layer (diagonal SSM per channel, GELU, output projection) — the
                paper's S4D baseline
    ``"shift"`` H3 layer whose diagonal SSM is replaced by a second shift SSM (shift-only ablation)
    ``"gss"``   gated state space layer (Mehta et al., 2022): GELU gates around a diagonal SSM
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

MixerKind = Literal["h3", "attn", "s4d", "shift", "gss"]
MIXER_KINDS: tuple[str, ...] = ("h3", "attn", "s4d", "shift", "gss")
PRESETS: tuple[str, ...] = ("h3", "attention", "hybrid", "s4d", "shift", "gss")
# Fields added after runs were stored, with the value that reproduces a stored run whose
# config lacks them (the dataclass defaults are what new runs get).
LEGACY_DEFAULTS: dict[str, Any] = {"h3_ssm": "channel"}


class InvalidModelConfig(ValueError):
    """An :class:`LMConfig` failed validation; ``errors`` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def preset_mixers(preset: str, n_layer: int) -> tuple[str, ...]:
    """The per-layer mixer list for a named preset.

    ``hybrid`` follows the H3 paper: attention at the second layer and at the layer after the
    middle (0-based indices 1 and ``n_layer // 2``), H3 everywhere else.
    """
    if n_layer < 1:
        raise ValueError("n_layer must be at least 1")
    if preset == "h3":
        return ("h3",) * n_layer
    if preset == "attention":
        return ("attn",) * n_layer
    if preset == "s4d":
        return ("s4d",) * n_layer
    if preset == "shift":
        return ("shift",) * n_layer
    if preset == "gss":
        return ("gss",) * n_layer
    if preset == "hybrid":
        attn_at = {min(1, n_layer - 1), n_layer // 2}
        return tuple("attn" if i in attn_at else "h3" for i in range(n_layer))
    raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


@dataclass(frozen=True)
class LMConfig:
    """Hyperparameters of :class:`h3lab.nn.lm.LanguageModel`.

    ``mixers`` is the per-layer mixer list; its length is the depth. ``d_state`` is the state
    size N of both SSMs (the diagonal SSM uses N/2 complex conjugate pairs; the shift SSM has N
    taps). ``head_dim`` is the H3 head dimension (1 = elementwise k ⊙ v, as in the paper's
    synthetic runs); ``n_head`` is the number of attention heads.

    ``h3_ssm``: ``"head"`` — the reference H3 (HazyResearch/H3 ``src/models/ssm/h3.py``): one
    diagonal SSM per head, shared by the head's head_dim² kv channels; ``"channel"`` — h3lab's
    earlier variant with one SSM per kv channel (head_dim² times the kv-SSM parameters; the
    two agree at head_dim 1). ``discretization`` defaults to the reference's bilinear.

    The reference LMs differ from h3lab's defaults in a few switchable places:
    ``pos_embed="learned"`` adds a learned position table of ``max_len`` rows to the token
    embeddings (safari's attention baseline); ``attn_rotary=False`` drops rotary positions
    from attention; ``attn_dropout`` is dropout on attention weights; ``embed_dropout`` (None:
    ``dropout``) is dropout on the embeddings; ``mlp_act="gelu_tanh"`` is the tanh-approximate
    GELU of the reference MLPs; ``gss_expand`` is GSS's hidden width factor.
    """

    vocab_size: int
    d_model: int = 64
    mixers: tuple[str, ...] = ("h3", "h3")
    d_state: int = 64
    head_dim: int = 1
    n_head: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    discretization: Literal["zoh", "bilinear"] = "bilinear"
    dt_min: float = 0.001
    dt_max: float = 0.1
    tie_embeddings: bool = True
    h3_ssm: Literal["head", "channel"] = "head"
    pos_embed: Literal["none", "learned"] = "none"
    max_len: int = 0
    attn_rotary: bool = True
    attn_dropout: float = 0.0
    embed_dropout: float | None = None
    mlp_act: Literal["gelu", "gelu_tanh"] = "gelu"
    gss_expand: int = 4
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        errors = self.errors()
        if errors:
            raise InvalidModelConfig(errors)

    @property
    def n_layer(self) -> int:
        return len(self.mixers)

    def errors(self) -> dict[str, str]:
        """Field name -> message for every invalid field (empty when valid)."""
        e: dict[str, str] = {}
        if self.vocab_size < 2:
            e["vocab_size"] = "must be at least 2"
        if self.d_model < 1:
            e["d_model"] = "must be positive"
        if not self.mixers:
            e["mixers"] = "need at least one layer"
        bad = [m for m in self.mixers if m not in MIXER_KINDS]
        if bad:
            e["mixers"] = f"unknown mixer {bad[0]!r}; choose from {', '.join(MIXER_KINDS)}"
        if self.d_state < 2 or self.d_state % 2:
            e["d_state"] = "must be an even number ≥ 2"
        if self.head_dim < 1 or self.d_model % self.head_dim:
            e["head_dim"] = f"must divide d_model ({self.d_model})"
        if "attn" in self.mixers and (self.n_head < 1 or self.d_model % self.n_head):
            e["n_head"] = f"must divide d_model ({self.d_model})"
        if self.mlp_ratio < 0:
            e["mlp_ratio"] = "must be ≥ 0 (0 disables the MLP)"
        if not 0.0 <= self.dropout < 1.0:
            e["dropout"] = "must be in [0, 1)"
        if self.discretization not in ("zoh", "bilinear"):
            e["discretization"] = "must be 'zoh' or 'bilinear'"
        if not 0 < self.dt_min <= self.dt_max:
            e["dt_max"] = "need 0 < dt_min ≤ dt_max"
        if self.h3_ssm not in ("head", "channel"):
            e["h3_ssm"] = "must be 'head' or 'channel'"
        if self.pos_embed not in ("none", "learned"):
            e["pos_embed"] = "must be 'none' or 'learned'"
        if self.pos_embed == "learned" and self.max_len < 1:
            e["max_len"] = "learned positions need max_len ≥ 1"
        if self.max_len < 0:
            e["max_len"] = "must be ≥ 0"
        for name in ("attn_dropout", "embed_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                e[name] = "must be in [0, 1)"
        if self.mlp_act not in ("gelu", "gelu_tanh"):
            e["mlp_act"] = "must be 'gelu' or 'gelu_tanh'"
        if self.gss_expand < 1:
            e["gss_expand"] = "must be ≥ 1"
        return e

    @classmethod
    def from_preset(cls, preset: str, *, n_layer: int = 2, **kwargs: Any) -> LMConfig:
        return cls(mixers=preset_mixers(preset, n_layer), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mixers"] = list(self.mixers)
        d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LMConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model field(s): {', '.join(sorted(unknown))}")
        kw = {**LEGACY_DEFAULTS, **d}
        if "mixers" in kw:
            kw["mixers"] = tuple(kw["mixers"])
        return cls(**kw)

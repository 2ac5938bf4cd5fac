"""The language model: token embedding, pre-norm residual blocks, final norm, LM head.

Each block is ``x + mixer(LN(x))`` then ``x + MLP(LN(x))`` (MLP = Linear, GELU, Linear;
``mlp_ratio = 0`` drops it). The mixer per layer comes from ``cfg.mixers`` ("h3", "attn",
"s4d", "shift", "gss"). By default there are no position embeddings: SSMs are
position-aware, attention is rotary; ``cfg.pos_embed = "learned"`` adds a learned table
``pos_embed`` (max_len, D) to the token embeddings, as safari's attention baseline has.

Three ways to run it, which agree (tests check this):
  * ``model(ids)`` — parallel over the sequence (training, evaluation);
  * ``state = allocate_inference_state(B, max_len)``; ``prefill(ids, state)``;
    ``step(tok, state)`` — recurrent, one token at a time (generation);
  * ``run_with_cache(ids, names)`` — the parallel pass, recording hook activations.

Hook names: ``hook_embed`` (B, L, D); ``blocks.{i}.hook_resid_pre``, ``hook_resid_mid``
(after the mixer), ``hook_resid_post`` (B, L, D); ``blocks.{i}.mixer.hook_*`` as documented in
:mod:`h3lab.nn.h3`, :mod:`h3lab.nn.attention` and :mod:`h3lab.nn.s4d`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from h3lab.nn.attention import Attention
from h3lab.nn.config import LMConfig
from h3lab.nn.gss import GSS
from h3lab.nn.h3 import H3
from h3lab.nn.hooks import HookPoint
from h3lab.nn.s4d import S4D
from h3lab.nn.ssm import DiagonalSSM, ShiftSSM

Mixer = H3 | Attention | S4D | GSS


def build_mixer(kind: str, cfg: LMConfig) -> Mixer:
    """The mixer module for one ``cfg.mixers`` entry."""
    if kind == "h3":
        return H3(cfg, kv_ssm="diag")
    if kind == "shift":
        return H3(cfg, kv_ssm="shift")
    if kind == "attn":
        return Attention(cfg)
    if kind == "s4d":
        return S4D(cfg)
    if kind == "gss":
        return GSS(cfg)
    raise ValueError(f"unknown mixer {kind!r}")


class MLP(nn.Module):
    """Linear, GELU (exact, or the tanh approximation of the reference LMs), Linear."""

    def __init__(self, d_model: int, ratio: int, act: str = "gelu") -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, ratio * d_model)
        self.fc_out = nn.Linear(ratio * d_model, d_model)
        self.approximate = "tanh" if act == "gelu_tanh" else "none"

    def forward(self, x: Tensor) -> Tensor:
        """(…, D) → (…, D)."""
        out: Tensor = self.fc_out(F.gelu(self.fc_in(x), approximate=self.approximate))
        return out


class Block(nn.Module):
    """One pre-norm residual block: mixer then (optionally) MLP."""

    def __init__(self, cfg: LMConfig, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.ln_mixer = nn.LayerNorm(cfg.d_model)
        self.mixer: Mixer = build_mixer(kind, cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model) if cfg.mlp_ratio else None
        self.mlp: MLP | None = (
            MLP(cfg.d_model, cfg.mlp_ratio, cfg.mlp_act) if cfg.mlp_ratio else None
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.hook_resid_pre = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x: Tensor, state: Any = None) -> Tensor:
        """x: (B, L, D) → (B, L, D). ``state``: this layer's inference state to prefill."""
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.dropout(self.mixer(self.ln_mixer(x), state)))
        if self.mlp is not None and self.ln_mlp is not None:
            x = x + self.dropout(self.mlp(self.ln_mlp(x)))
        out: Tensor = self.hook_resid_post(x)
        return out

    def step(self, x: Tensor, state: Any) -> Tensor:
        """x: (B, D) → (B, D), one token; no hooks, no dropout."""
        x = x + self.mixer.step(self.ln_mixer(x), state)
        if self.mlp is not None and self.ln_mlp is not None:
            x = x + self.mlp(self.ln_mlp(x))
        return x


@dataclass
class InferenceState:
    """Per-layer recurrent states (SSM states, KV caches) and the tokens consumed so far."""

    layers: list[Any]
    max_len: int
    pos: int = 0


class LanguageModel(nn.Module):
    """A causal language model over ``cfg.vocab_size`` tokens; see the module docstring.

    Initialisation is deterministic: with ``generator`` every parameter is drawn from it and
    the global RNG is left untouched; without, the global RNG (``torch.manual_seed``) is used.
    """

    def __init__(self, cfg: LMConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        # Submodule constructors draw default inits from the global RNG; fork it so that
        # building with an explicit generator has no hidden effect on global state.
        with torch.random.fork_rng(devices=[], enabled=generator is not None):
            self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
            self.hook_embed = HookPoint()
            self.blocks = nn.ModuleList(Block(cfg, kind) for kind in cfg.mixers)
            self.ln_final = nn.LayerNorm(cfg.d_model)
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
            embed_p = cfg.dropout if cfg.embed_dropout is None else cfg.embed_dropout
            self.drop_embed = nn.Dropout(embed_p)
            self.pos_embed: nn.Embedding | None = (
                nn.Embedding(cfg.max_len, cfg.d_model) if cfg.pos_embed == "learned" else None
            )
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.reset_parameters(generator)

    @property
    def block_list(self) -> list[Block]:
        """The blocks, typed (``self.blocks`` is an ``nn.ModuleList``)."""
        return cast(list[Block], list(self.blocks))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2-style init (N(0, 0.02), residual output projections scaled by
        1/√(2·n_layer)); SSMs use their own S4D/shift inits. Order is fixed, so a generator
        seed determines the whole model."""
        n_layer = self.cfg.n_layer
        self.embed.weight.normal_(0.0, 0.02, generator=generator)
        if self.pos_embed is not None:
            self.pos_embed.weight.normal_(0.0, 0.02, generator=generator)
        for block in self.block_list:
            for ln in (block.ln_mixer, block.ln_mlp):
                if ln is not None:
                    ln.reset_parameters()
            block.mixer.reset_parameters(generator, n_layer)
            if block.mlp is not None:
                block.mlp.fc_in.weight.normal_(0.0, 0.02, generator=generator)
                block.mlp.fc_in.bias.zero_()
                std = 0.02 / math.sqrt(2 * n_layer)
                block.mlp.fc_out.weight.normal_(0.0, std, generator=generator)
                block.mlp.fc_out.bias.zero_()
        self.ln_final.reset_parameters()
        if not self.cfg.tie_embeddings:
            self.lm_head.weight.normal_(0.0, 0.02, generator=generator)

    # ------------------------------------------------------------------------ parallel

    def forward(self, input_ids: Tensor, state: InferenceState | None = None) -> Tensor:
        """input_ids: (B, L) int64 → logits (B, L, vocab_size) float. Causal: position t's
        logits depend on tokens ≤ t only. With a fresh ``state``, also prefill it."""
        x = self.embed(input_ids)  # (B, L, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed(torch.arange(input_ids.shape[1], device=input_ids.device))
        x = self.drop_embed(self.hook_embed(x))  # (B, L, D)
        for i, block in enumerate(self.block_list):
            x = block(x, None if state is None else state.layers[i])
        if state is not None:
            state.pos = input_ids.shape[1]
        logits: Tensor = self.lm_head(self.ln_final(x))  # (B, L, V)
        return logits

    def prefill(self, input_ids: Tensor, state: InferenceState) -> Tensor:
        """Run the prompt (B, L) in parallel and leave ``state`` where L calls of
        :meth:`step` would have left it. ``state`` must be fresh. Returns logits (B, L, V)."""
        if state.pos != 0:
            raise ValueError("prefill needs a fresh state")
        if input_ids.shape[1] > state.max_len:
            raise ValueError("prompt longer than the state's max_len")
        logits: Tensor = self(input_ids, state)
        return logits

    # ---------------------------------------------------------------------- recurrent

    def allocate_inference_state(self, batch_size: int, max_len: int) -> InferenceState:
        """Fixed-size SSM states and KV caches (for ``max_len`` tokens) for ``batch_size``
        sequences, on the model's device and dtype. SSM discretisations are snapshotted:
        allocate after the parameters last change."""
        p = self.embed.weight
        layers = [
            b.mixer.allocate_state(batch_size, max_len, p.device, p.dtype) for b in self.block_list
        ]
        return InferenceState(layers=layers, max_len=max_len)

    @torch.no_grad()
    def step(self, tokens: Tensor, state: InferenceState) -> Tensor:
        """tokens: (B,) int64, the next token of each sequence → logits (B, V) for the token
        after it. Advances ``state`` in place."""
        x = self.embed(tokens)  # (B, D)
        if self.pos_embed is not None:
            x = x + self.pos_embed.weight[state.pos]
        for block, s in zip(self.block_list, state.layers, strict=True):
            x = block.step(x, s)
        state.pos += 1
        logits: Tensor = self.lm_head(self.ln_final(x))
        return logits

    @torch.no_grad()
    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continue (B, L0) prompts by ``max_new_tokens`` tokens → (B, L0 + max_new_tokens).

        The prompt is prefilled in parallel, then each token costs one :meth:`step`.
        ``temperature = 0`` is greedy (argmax); otherwise sample from
        ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens,
        drawing from ``generator``. Runs in eval mode (no dropout), restoring the mode after.
        """
        if input_ids.ndim != 2 or input_ids.shape[1] < 1:
            raise ValueError("input_ids must be (B, L0) with L0 ≥ 1")
        if max_new_tokens <= 0:
            return input_ids.clone()
        was_training = self.training
        self.eval()
        try:
            B, L0 = input_ids.shape
            state = self.allocate_inference_state(B, L0 + max_new_tokens)
            logits = self.prefill(input_ids, state)[:, -1]  # (B, V)
            out = [input_ids]
            for i in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_k, generator)  # (B,)
                out.append(nxt[:, None])
                if i + 1 < max_new_tokens:
                    logits = self.step(nxt, state)
            return torch.cat(out, dim=1)
        finally:
            self.train(was_training)

    # -------------------------------------------------------------------------- hooks

    def hook_names(self) -> list[str]:
        """Every hook point's name, in module order (stable for a given config)."""
        return [n for n, m in self.named_modules() if isinstance(m, HookPoint)]

    def run_with_cache(
        self, input_ids: Tensor, names: Iterable[str] | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The parallel forward, also returning ``{name: activation}`` (detached) for the hook
        points in ``names`` (all when None). Unknown names raise KeyError."""
        points = {n: m for n, m in self.named_modules() if isinstance(m, HookPoint)}
        wanted = list(points) if names is None else list(names)
        unknown = [n for n in wanted if n not in points]
        if unknown:
            raise KeyError(f"unknown hook name(s): {', '.join(unknown)}")
        cache: dict[str, Tensor] = {}

        def save(name: str, _m: nn.Module, _args: Any, out: Tensor) -> None:
            cache[name] = out.detach()

        handles: list[RemovableHandle] = []
        try:
            for n in wanted:
                handles.append(points[n].register_forward_hook(functools.partial(save, n)))
            logits = self(input_ids)
        finally:
            for h in handles:
                h.remove()
        return logits, cache

    # ---------------------------------------------------------------- optimiser groups

    def ssm_parameter_names(self) -> set[str]:
        """Parameters that get ``ssm_lr`` and no weight decay, as in H3/S4: the diagonal
        SSMs' ``log_dt``, ``log_A_real``, ``A_imag``, ``B``, ``C`` and the shift SSMs' taps
        ``C`` (the skip weights ``D`` are ordinary no-decay parameters)."""
        names: set[str] = set()
        for mod_name, mod in self.named_modules():
            own: tuple[str, ...]
            if isinstance(mod, DiagonalSSM):
                own = ("log_dt", "log_A_real", "A_imag", "B", "C")
            elif isinstance(mod, ShiftSSM):
                own = ("C",)
            else:
                continue
            names.update(f"{mod_name}.{p}" for p in own)
        return names

    def no_decay_parameter_names(self) -> set[str]:
        """Biases, LayerNorm parameters, embeddings and SSM skip weights ``D`` — everything
        but matrix weights — excluding :meth:`ssm_parameter_names`."""
        ssm = self.ssm_parameter_names()
        names: set[str] = set()
        for mod_name, mod in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for p_name, _ in mod.named_parameters(recurse=False):
                full = prefix + p_name
                if full in ssm:
                    continue
                if (
                    isinstance(mod, nn.LayerNorm | nn.Embedding)
                    or p_name == "bias"
                    or (isinstance(mod, DiagonalSSM | ShiftSSM) and p_name == "D")
                ):
                    names.add(full)
        return names


def sample_next(
    logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> Tensor:
    """Next tokens (B,) from logits (B, V): argmax when ``temperature == 0``, else a draw from
    the tempered, optionally top-k-truncated softmax using ``generator``."""
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]

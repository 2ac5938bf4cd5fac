"""Weights in the HazyResearch/H3 state-dict layout → h3lab's :class:`LanguageModel`.

The released H3 checkpoints (H3-125M, 355M, 1.3B, 2.7B; ``src/models/ssm_seq.py``
``SSMLMHeadModel``) are hybrids: H3 layers with attention at a few indices. Their keys::

    backbone.embeddings.word_embeddings.weight                  (V, D)  tied to lm_head
    backbone.layers.{i}.norm1.{weight,bias}, norm2.{weight,bias} (D,)    pre-norms
    backbone.layers.{i}.mixer.q_proj / k_proj / v_proj / output_linear .{weight,bias}   (H3)
    backbone.layers.{i}.mixer.ssm_k_kernel.kernel.B             (D, N)  shift SSM input
    backbone.layers.{i}.mixer.ssm_k_kernel.kernel.C             (1, D, N) shift SSM taps
    backbone.layers.{i}.mixer.ssm_k_D                           (D,)
    backbone.layers.{i}.mixer.kernel.kernel.log_dt              (H,)    H = D / head_dim
    backbone.layers.{i}.mixer.kernel.kernel.inv_A_real, A_imag  (H, N/2)
    backbone.layers.{i}.mixer.kernel.kernel.B                   (H, N/2, 2)  complex as real
    backbone.layers.{i}.mixer.kernel.kernel.C                   (1, H, N/2, 2)
    backbone.layers.{i}.mixer.D                                 (H,)
    backbone.layers.{i}.mixer.Wqkv.{weight,bias}, out_proj.{weight,bias}   (attention)
    backbone.layers.{i}.mlp.fc1.{weight,bias}, fc2.{weight,bias}
    backbone.ln_f.{weight,bias}

(``lm_head.weight`` may be present too; it is the embedding.) The mapping is exact:
q/k/v projections concatenate into ``in_proj``; the reference's shift SSM has a trainable
input vector B besides its taps C, and its kernel is their correlation
``K[h, l] = Σ_n B[h, n] C[h, n + l]`` — folded into h3lab's taps, which equal that kernel;
the diagonal SSM's parameters copy over (``inv_A_real`` is h3lab's ``log_A_real``, both
``A = −exp(·) + i·A_imag``), with bilinear discretisation and one SSM per head
(``h3_ssm="head"``). The models use tanh-GELU MLPs, no position embeddings and, unless a
checkpoint carries rotary tables, attention without rotary positions.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from h3lab.nn.config import LMConfig

if TYPE_CHECKING:
    from h3lab.nn.lm import LanguageModel

_LAYER = re.compile(r"^backbone\.layers\.(\d+)\.")


def normalize_reference_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """The reference's own remapping (``SSMLMHeadModel.load_state_dict``): older checkpoints
    name the backbone ``s4seq.encoder`` / ``embedding`` and keep the norms in post-block order
    (``norm`` + ``ln_0``); bring them to the current layout. A PyTorch-Lightning checkpoint's
    ``state_dict`` with ``model.`` prefixes is unwrapped by the caller."""
    out: dict[str, Tensor] = OrderedDict()
    for k, v in sd.items():
        k = re.sub(r"^s4seq\.encoder\.", "backbone.", k)
        k = re.sub(r"^embedding\.", "backbone.embeddings.word_embeddings.", k)
        k = re.sub(r"^backbone\.norm", "backbone.ln_0", k)
        out[k] = v
    if "backbone.ln_0.weight" in out:
        n = 1 + max(int(m.group(1)) for k in out if (m := _LAYER.match(k)))
        for p in ("weight", "bias"):
            out[f"backbone.ln_f.{p}"] = out.pop(f"backbone.layers.{n - 1}.norm2.{p}")
            for i in reversed(range(n)):
                out[f"backbone.layers.{i}.norm2.{p}"] = out.pop(f"backbone.layers.{i}.norm1.{p}")
                if i > 0:
                    prev = out.pop(f"backbone.layers.{i - 1}.norm2.{p}")
                    out[f"backbone.layers.{i}.norm1.{p}"] = prev
            out[f"backbone.layers.0.norm1.{p}"] = out.pop(f"backbone.ln_0.{p}")
    return out


def reference_config(sd: dict[str, Tensor], *, n_head: int | None = None) -> LMConfig:
    """The :class:`LMConfig` of a reference state dict, read from its shapes. The number of
    attention heads is not in the shapes: ``n_head`` (default: head dimension 64, as the
    125M and 355M models; the 1.3B and 2.7B use head dimension 128)."""
    emb = sd["backbone.embeddings.word_embeddings.weight"]
    V, D = emb.shape
    layers = sorted({int(m.group(1)) for k in sd if (m := _LAYER.match(k))})
    if layers != list(range(len(layers))) or not layers:
        raise ValueError("state dict has no backbone.layers.{i} or a gap in their indices")
    mixers: list[str] = []
    d_state, head_dim, rotary = 0, 1, False
    for i in layers:
        p = f"backbone.layers.{i}.mixer."
        if p + "Wqkv.weight" in sd:
            mixers.append("attn")
            rotary = rotary or any(k.startswith(p + "rotary_emb") for k in sd)
        elif p + "kernel.kernel.log_dt" in sd:
            mixers.append("h3")
            d_state = 2 * sd[p + "kernel.kernel.A_imag"].shape[1]
            head_dim = D // sd[p + "kernel.kernel.log_dt"].shape[0]
        else:
            raise ValueError(f"layer {i}: neither an H3 nor an attention mixer")
    fc1 = sd.get(f"backbone.layers.{layers[0]}.mlp.fc1.weight")
    mlp_ratio = 0 if fc1 is None else fc1.shape[0] // D
    if fc1 is not None and fc1.shape[0] != mlp_ratio * D:
        raise ValueError(f"MLP width {fc1.shape[0]} is not a multiple of d_model {D}")
    return LMConfig(
        vocab_size=V,
        d_model=D,
        mixers=tuple(mixers),
        d_state=d_state or 64,
        head_dim=head_dim,
        n_head=n_head or max(1, D // 64),
        mlp_ratio=mlp_ratio,
        discretization="bilinear",
        h3_ssm="head",
        attn_rotary=rotary,
        mlp_act="gelu_tanh",
    )


def fold_shift_kernel(B: Tensor, C: Tensor) -> Tensor:
    """Taps of the reference shift SSM: ``K[h, l] = Σ_n B[h, n] C[h, n + l]`` for l < N.
    B: (D, N), C: (1, D, N) or (D, N) → (D, N)."""
    C = C.reshape(B.shape)
    N = B.shape[-1]
    return torch.stack([(B[:, : N - j] * C[:, j:]).sum(-1) for j in range(N)], dim=-1)


def h3_mixer_state_dict(p: dict[str, Tensor]) -> dict[str, Tensor]:
    """One reference H3 mixer's parameters (keys without the ``…mixer.`` prefix) → the keys
    of h3lab's :class:`~h3lab.nn.h3.H3` (``h3_ssm="head"``, bilinear)."""
    out: dict[str, Tensor] = {}
    for x in ("weight", "bias"):
        out[f"in_proj.{x}"] = torch.cat([p[f"{n}_proj.{x}"] for n in "qkv"])
        out[f"out_proj.{x}"] = p[f"output_linear.{x}"]
    out["shift_ssm.C"] = fold_shift_kernel(p["ssm_k_kernel.kernel.B"], p["ssm_k_kernel.kernel.C"])
    out["shift_ssm.D"] = p["ssm_k_D"]
    k = "kernel.kernel."
    out["kv_ssm.log_dt"] = p[k + "log_dt"]
    out["kv_ssm.log_A_real"] = p[k + "inv_A_real"]
    out["kv_ssm.A_imag"] = p[k + "A_imag"]
    out["kv_ssm.B"] = p[k + "B"]
    out["kv_ssm.C"] = p[k + "C"].reshape(p[k + "B"].shape)
    out["kv_ssm.D"] = p["D"]
    return out


def reference_mixer_state_dict(p: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of :func:`h3_mixer_state_dict`: h3lab H3 keys → the reference's. The shift
    SSM's input vector becomes e₁, so its folded kernel is exactly h3lab's taps (and the
    gradient of the reference taps ``C`` equals that of h3lab's)."""
    D, N = p["shift_ssm.C"].shape
    d = D // p["kv_ssm.log_dt"].shape[0]
    e1 = torch.zeros(D, N, dtype=p["shift_ssm.C"].dtype)
    e1[:, 0] = 1.0
    out: dict[str, Tensor] = {}
    for x in ("weight", "bias"):
        for n, part in zip("qkv", p[f"in_proj.{x}"].chunk(3), strict=True):
            out[f"{n}_proj.{x}"] = part
        out[f"output_linear.{x}"] = p[f"out_proj.{x}"]
    if d * p["kv_ssm.log_dt"].shape[0] != D:
        raise ValueError("the reference H3 shares one kv SSM per head (h3_ssm='head')")
    out["ssm_k_kernel.kernel.B"] = e1
    out["ssm_k_kernel.kernel.C"] = p["shift_ssm.C"][None]
    out["ssm_k_D"] = p["shift_ssm.D"]
    k = "kernel.kernel."
    out[k + "log_dt"] = p["kv_ssm.log_dt"]
    out[k + "inv_A_real"] = p["kv_ssm.log_A_real"]
    out[k + "A_imag"] = p["kv_ssm.A_imag"]
    out[k + "B"] = p["kv_ssm.B"]
    out[k + "C"] = p["kv_ssm.C"][None]
    out["D"] = p["kv_ssm.D"]
    return out


def h3lab_state_dict(sd: dict[str, Tensor], cfg: LMConfig) -> dict[str, Tensor]:
    """Map a (normalised) reference state dict to h3lab's :class:`LanguageModel` keys."""
    out: dict[str, Tensor] = {"embed.weight": sd["backbone.embeddings.word_embeddings.weight"]}
    for i, kind in enumerate(cfg.mixers):
        src, dst = f"backbone.layers.{i}.", f"blocks.{i}."
        for a, b in (("norm1", "ln_mixer"), ("norm2", "ln_mlp"), ("mlp.fc1", "mlp.fc_in")):
            for p in ("weight", "bias"):
                if f"{src}{a}.{p}" in sd:
                    out[f"{dst}{b}.{p}"] = sd[f"{src}{a}.{p}"]
        for p in ("weight", "bias"):
            if f"{src}mlp.fc2.{p}" in sd:
                out[f"{dst}mlp.fc_out.{p}"] = sd[f"{src}mlp.fc2.{p}"]
        m, t = src + "mixer.", dst + "mixer."
        if kind == "attn":
            for p in ("weight", "bias"):
                out[f"{t}in_proj.{p}"] = sd[f"{m}Wqkv.{p}"]
                out[f"{t}out_proj.{p}"] = sd[f"{m}out_proj.{p}"]
            continue
        mixer = {k[len(m) :]: v for k, v in sd.items() if k.startswith(m)}
        out.update({t + k: v for k, v in h3_mixer_state_dict(mixer).items()})
    out["ln_final.weight"] = sd["backbone.ln_f.weight"]
    out["ln_final.bias"] = sd["backbone.ln_f.bias"]
    out["lm_head.weight"] = out["embed.weight"]  # tied, as in the reference
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def unwrap_checkpoint(obj: object) -> dict[str, Tensor]:
    """The model state dict inside a loaded checkpoint: a plain state dict, or a
    PyTorch-Lightning checkpoint whose ``state_dict`` keys start with ``model.``."""
    if not isinstance(obj, dict):
        raise ValueError("checkpoint is not a state dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = {
            k[len("model.") :]: v for k, v in obj["state_dict"].items() if k.startswith("model.")
        }
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ValueError("checkpoint holds no tensors")
    return tensors


def import_reference_checkpoint(
    path: str | Path, *, n_head: int | None = None
) -> tuple[LanguageModel, LMConfig]:
    """Load a reference checkpoint file into h3lab's LM (CPU, eval mode).

    SECURITY: the released checkpoints are torch pickles. ``torch.load(weights_only=True)``
    unpickles tensors and plain containers only — no arbitrary objects, so a hostile file
    cannot run code — and everything after that is tensor copying."""
    from h3lab.nn.lm import LanguageModel

    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    sd = normalize_reference_keys(unwrap_checkpoint(obj))
    cfg = reference_config(sd, n_head=n_head)
    model = LanguageModel(cfg)
    model.load_state_dict(h3lab_state_dict(sd, cfg), strict=True)
    return model.eval(), cfg

"""h3lab's layers against slow references written from the papers' equations, and the
HazyResearch/H3 state-dict layout loaded into h3lab's language model.

The references here are deliberately naive: one time step at a time, the state-space
recurrences ``x_t = Ā x_{t−1} + B̄ u_t``, ``y_t = C x_t + D u_t`` written out, in the
reference code's parameter names and channel orders (HazyResearch/H3
``src/models/ssm/h3.py``, ``ss_kernel_diag.py``, ``ss_kernel_shift.py``, ``ssm_seq.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from h3lab.nn.config import LMConfig
from h3lab.nn.gss import GSS
from h3lab.nn.h3 import H3
from h3lab.nn.lm import LanguageModel
from h3lab.nn.reference_weights import (
    h3lab_state_dict,
    normalize_reference_keys,
    reference_config,
)

D, N, V = 8, 6, 11


def close(got: Tensor, want: Tensor, tol: float = 1e-5) -> bool:
    """max |got − want| ≤ tol, relative to the output's scale when it exceeds 1 (float32)."""
    err = float((got.detach() - want.detach()).abs().max())
    return err <= tol * max(1.0, float(want.detach().abs().max()))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, g: torch.Generator, scale: float = 1.0) -> Tensor:
    return torch.randn(*shape, generator=g) * scale


def reference_h3_params(
    d_model: int, d_state: int, head_dim: int, g: torch.Generator
) -> dict[str, Tensor]:
    """One H3 mixer's parameters in the reference's names and shapes, random (including the
    shift SSM's B, which the reference initialises to e₁ but trains)."""
    H, n = d_model // head_dim, d_state // 2
    p: dict[str, Tensor] = {}
    for x in ("q", "k", "v"):
        p[f"{x}_proj.weight"] = randn(d_model, d_model, g=g, scale=0.4)
        p[f"{x}_proj.bias"] = randn(d_model, g=g, scale=0.1)
    p["ssm_k_kernel.kernel.B"] = randn(d_model, d_state, g=g, scale=0.5)
    p["ssm_k_kernel.kernel.C"] = randn(1, d_model, d_state, g=g, scale=0.5)
    p["ssm_k_D"] = randn(d_model, g=g)
    p["kernel.kernel.log_dt"] = math.log(0.01) + torch.rand(H, generator=g) * math.log(50)
    p["kernel.kernel.inv_A_real"] = math.log(0.5) + randn(H, n, g=g, scale=0.3)
    p["kernel.kernel.A_imag"] = math.pi * torch.arange(n).float().expand(H, n).clone()
    p["kernel.kernel.B"] = randn(H, n, 2, g=g, scale=0.7)
    p["kernel.kernel.C"] = randn(1, H, n, 2, g=g, scale=0.7)
    p["D"] = randn(H, g=g)
    p["output_linear.weight"] = randn(d_model, d_model, g=g, scale=0.4)
    p["output_linear.bias"] = randn(d_model, g=g, scale=0.1)
    return p


def h3_recurrence(p: dict[str, Tensor], u: Tensor, head_dim: int) -> Tensor:
    """The H3 layer one token at a time, from the paper's equations. u: (B, L, D) → (B, L, D).

    q, k, v = linear maps of u_t; the shift SSM (A = shift matrix, input vector B, taps C):
    s_t = shift(s_{t−1}) + B k_t, k̃_t = C·s_t + D_k k_t; per head h and key/value entries
    i, j: kv = k̃[h·d+i] v[h·d+j]; one diagonal SSM per head, bilinear:
    Ā = (1 + ΔA/2)/(1 − ΔA/2), B̄ = ΔB/(1 − ΔA/2), x_t = Ā x_{t−1} + B̄ kv_t,
    y = 2 Re(C x_t) + D_h kv_t; out[j·H + h] = Σ_i q[h·d+i] y[i, j, h]; then the output map.
    """
    Bsz, L, Dm = u.shape
    d, H = head_dim, Dm // head_dim
    Bs, Cs = p["ssm_k_kernel.kernel.B"], p["ssm_k_kernel.kernel.C"][0]  # (D, N) each
    dt = p["kernel.kernel.log_dt"].exp()[:, None]  # (H, 1)
    A = torch.complex(-p["kernel.kernel.inv_A_real"].exp(), p["kernel.kernel.A_imag"])
    Bd = torch.view_as_complex(p["kernel.kernel.B"].contiguous())  # (H, n)
    Cd = torch.view_as_complex(p["kernel.kernel.C"][0].contiguous())  # (H, n)
    A_bar = (1 + dt * A / 2) / (1 - dt * A / 2)
    B_bar = dt * Bd / (1 - dt * A / 2)
    s = torch.zeros(Bsz, Dm, Bs.shape[1])  # shift state
    x = torch.zeros(Bsz, d, d, H, A.shape[1], dtype=torch.complex64)  # per (i, j, h)
    outs = []
    for t in range(L):
        ut = u[:, t]  # (B, D)
        q, k, v = (ut @ p[f"{n}_proj.weight"].T + p[f"{n}_proj.bias"] for n in "qkv")
        s = F.pad(s, (1, -1)) + Bs * k[..., None]
        k_sh = (s * Cs).sum(-1) + p["ssm_k_D"] * k  # (B, D)
        kh = k_sh.reshape(Bsz, H, d).transpose(1, 2)  # (B, i, h)
        vh = v.reshape(Bsz, H, d).transpose(1, 2)  # (B, j, h)
        kv = kh[:, :, None, :] * vh[:, None, :, :]  # (B, i, j, h)
        x = A_bar * x + B_bar * kv[..., None]
        y = 2 * (Cd * x).sum(-1).real + p["D"] * kv  # (B, i, j, h)
        qh = q.reshape(Bsz, H, d).transpose(1, 2)  # (B, i, h)
        o = (qh[:, :, None, :] * y).sum(1).reshape(Bsz, d * H)  # (B, j·H + h)
        outs.append(o @ p["output_linear.weight"].T + p["output_linear.bias"])
    return torch.stack(outs, dim=1)


def h3_layer_from_reference(p: dict[str, Tensor], head_dim: int) -> H3:
    sd = {f"backbone.layers.0.mixer.{k}": v for k, v in p.items()}
    sd["backbone.embeddings.word_embeddings.weight"] = torch.zeros(V, D)
    sd["backbone.ln_f.weight"], sd["backbone.ln_f.bias"] = torch.ones(D), torch.zeros(D)
    cfg = reference_config(sd)
    assert (cfg.head_dim, cfg.d_state, cfg.h3_ssm) == (head_dim, N, "head")
    mapped = h3lab_state_dict(sd, cfg)
    layer = H3(cfg)
    prefix = "blocks.0.mixer."
    layer.load_state_dict({k[len(prefix) :]: v for k, v in mapped.items() if k.startswith(prefix)})
    return layer


@pytest.mark.parametrize("head_dim", [1, 2, 4])
def test_h3_with_mapped_reference_weights_equals_the_step_by_step_recurrence(
    head_dim: int,
) -> None:
    p = reference_h3_params(D, N, head_dim, gen(head_dim))
    layer = h3_layer_from_reference(p, head_dim)
    u = randn(3, 13, D, g=gen(10))
    want = h3_recurrence(p, u, head_dim)
    got = layer(u)
    assert close(got, want)
    # The recurrent generation path agrees too.
    state = layer.allocate_state(3)
    stepped = torch.stack([layer.step(u[:, t], state) for t in range(13)], dim=1)
    assert close(stepped, want)


def test_the_reference_h3_shares_one_ssm_per_head_and_the_channel_variant_does_not() -> None:
    shared = H3(LMConfig(vocab_size=V, d_model=16, head_dim=4, d_state=N))
    unshared = H3(LMConfig(vocab_size=V, d_model=16, head_dim=4, d_state=N, h3_ssm="channel"))
    assert shared.kv_ssm.log_dt.shape == (4,)  # H = 16 / 4 heads
    assert unshared.kv_ssm.log_dt.shape == (64,)  # one per kv channel: 16 · 4
    assert LMConfig(vocab_size=V).discretization == "bilinear"  # the reference's default
    legacy = LMConfig.from_dict({"vocab_size": V, "head_dim": 2, "discretization": "zoh"})
    assert legacy.h3_ssm == "channel"  # stored configs keep the layer they were trained with


def gss_recurrence(m: GSS, x: Tensor) -> Tensor:
    """GSS one token at a time from Mehta et al.'s Figure 1 with a diagonal SSM written out:
    v = GELU(W_v x), u = GELU(W_u x), x_t = Ā x_{t−1} + B̄ u_t, y = 2 Re(C x_t) + D u_t,
    out = W_o((W_y y) ⊙ v)."""
    ssm = m.ssm
    dt = ssm.log_dt.exp()[:, None]
    A = torch.complex(-ssm.log_A_real.exp(), ssm.A_imag)
    Bc, Cc = torch.view_as_complex(ssm.B), torch.view_as_complex(ssm.C)
    A_bar = (1 + dt * A / 2) / (1 - dt * A / 2)
    B_bar = dt * Bc / (1 - dt * A / 2)
    state = torch.zeros(x.shape[0], *A.shape, dtype=torch.complex64)
    outs = []
    for t in range(x.shape[1]):
        v = F.gelu(x[:, t] @ m.v_proj.weight.T + m.v_proj.bias)
        u = F.gelu(x[:, t] @ m.u_proj.weight.T + m.u_proj.bias)
        state = A_bar * state + B_bar * u[..., None]
        y = 2 * (Cc * state).sum(-1).real + ssm.D * u
        g = (y @ m.y_proj.weight.T + m.y_proj.bias) * v
        outs.append(g @ m.out_proj.weight.T + m.out_proj.bias)
    return torch.stack(outs, dim=1)


def test_gss_equals_its_step_by_step_reference() -> None:
    torch.manual_seed(0)
    m = GSS(LMConfig(vocab_size=V, d_model=16, d_state=N, mixers=("gss",)))
    m.reset_parameters(gen(3))
    with torch.no_grad():
        for lin in (m.v_proj, m.u_proj, m.y_proj, m.out_proj):
            lin.weight.normal_(0, 0.3, generator=gen(4))
        m.ssm.log_dt.copy_(torch.linspace(math.log(0.01), math.log(0.5), m.d_ssm))
    x = randn(2, 11, 16, g=gen(5))
    want = gss_recurrence(m, x)
    got = m(x)
    assert m.d_ssm == 4 and m.d_ff == 64  # H = D/4, F = 4D as in the paper
    assert close(got, want)


# ------------------------------------------------------------------ the released LM layout


def reference_lm_state_dict(
    mixers: list[str], head_dim: int, g: torch.Generator
) -> dict[str, Tensor]:
    """A tiny SSMLMHeadModel state dict: random weights in the released checkpoints' layout."""
    sd: dict[str, Tensor] = {
        "backbone.embeddings.word_embeddings.weight": randn(V, D, g=g, scale=0.5)
    }
    for i, kind in enumerate(mixers):
        b = f"backbone.layers.{i}."
        for ln in ("norm1", "norm2"):
            sd[f"{b}{ln}.weight"] = 1 + randn(D, g=g, scale=0.1)
            sd[f"{b}{ln}.bias"] = randn(D, g=g, scale=0.1)
        sd[b + "mlp.fc1.weight"] = randn(4 * D, D, g=g, scale=0.3)
        sd[b + "mlp.fc1.bias"] = randn(4 * D, g=g, scale=0.1)
        sd[b + "mlp.fc2.weight"] = randn(D, 4 * D, g=g, scale=0.3)
        sd[b + "mlp.fc2.bias"] = randn(D, g=g, scale=0.1)
        if kind == "attn":
            sd[b + "mixer.Wqkv.weight"] = randn(3 * D, D, g=g, scale=0.4)
            sd[b + "mixer.Wqkv.bias"] = randn(3 * D, g=g, scale=0.1)
            sd[b + "mixer.out_proj.weight"] = randn(D, D, g=g, scale=0.4)
            sd[b + "mixer.out_proj.bias"] = randn(D, g=g, scale=0.1)
        else:
            for k, v in reference_h3_params(D, N, head_dim, g).items():
                sd[b + "mixer." + k] = v
    sd["backbone.ln_f.weight"] = 1 + randn(D, g=g, scale=0.1)
    sd["backbone.ln_f.bias"] = randn(D, g=g, scale=0.1)
    sd["lm_head.weight"] = sd["backbone.embeddings.word_embeddings.weight"]
    return sd


def reference_lm_forward(
    sd: dict[str, Tensor], ids: Tensor, mixers: list[str], n_head: int, head_dim: int
) -> Tensor:
    """SSMLMHeadModel's forward written out: pre-norm blocks (flash-attn ``Block``), causal
    softmax attention without positions, tanh-GELU MLP, final norm, tied head."""
    x = sd["backbone.embeddings.word_embeddings.weight"][ids]  # (B, L, D)
    Bsz, L, _ = x.shape
    for i, kind in enumerate(mixers):
        b = f"backbone.layers.{i}."
        h = F.layer_norm(x, (D,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], 1e-5)
        if kind == "attn":
            qkv = h @ sd[b + "mixer.Wqkv.weight"].T + sd[b + "mixer.Wqkv.bias"]
            qkv = qkv.reshape(Bsz, L, 3, n_head, D // n_head)  # (three h d)
            q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (B, nh, L, hd)
            scores = q @ k.mT / math.sqrt(D // n_head)
            mask = torch.ones(L, L, dtype=torch.bool).tril()
            z = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
            z = z.transpose(1, 2).reshape(Bsz, L, D)
            h = z @ sd[b + "mixer.out_proj.weight"].T + sd[b + "mixer.out_proj.bias"]
        else:
            p = {k[len(b + "mixer.") :]: v for k, v in sd.items() if k.startswith(b + "mixer.")}
            h = h3_recurrence(p, h, head_dim)
        x = x + h
        h = F.layer_norm(x, (D,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], 1e-5)
        h = F.gelu(h @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"], approximate="tanh")
        x = x + h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
    x = F.layer_norm(x, (D,), sd["backbone.ln_f.weight"], sd["backbone.ln_f.bias"], 1e-5)
    return x @ sd["backbone.embeddings.word_embeddings.weight"].T


@pytest.mark.parametrize("head_dim", [1, 2])
def test_a_state_dict_in_the_released_h3_layout_loads_and_computes_the_reference_forward(
    head_dim: int,
) -> None:
    mixers = ["h3", "attn", "h3"]
    sd = reference_lm_state_dict(mixers, head_dim, gen(20 + head_dim))
    cfg = reference_config(sd, n_head=2)
    assert cfg.mixers == ("h3", "attn", "h3") and cfg.mlp_ratio == 4
    assert (cfg.attn_rotary, cfg.mlp_act, cfg.pos_embed) == (False, "gelu_tanh", "none")
    model = LanguageModel(cfg)
    model.load_state_dict(h3lab_state_dict(sd, cfg), strict=True)
    model.eval()
    ids = torch.randint(0, V, (2, 9), generator=gen(30))
    want = reference_lm_forward(sd, ids, mixers, n_head=2, head_dim=head_dim)
    got = model(ids)
    assert close(got, want)


def test_older_checkpoint_names_and_norm_order_are_remapped_as_the_reference_does() -> None:
    new = reference_lm_state_dict(["h3", "h3"], 1, gen(40))
    old: dict[str, Tensor] = {}
    # The older layout: s4seq.encoder prefix, "embedding.", norms in post-block order.
    for k, v in new.items():
        if k.startswith("backbone.embeddings.word_embeddings"):
            old["embedding.weight"] = v
        elif k.startswith("backbone.ln_f"):
            old["s4seq.encoder.layers.1.norm2." + k.rsplit(".", 1)[1]] = v
        elif ".norm1." in k:
            i, p = int(k.split(".")[2]), k.rsplit(".", 1)[1]
            name = "norm." if i == 0 else f"layers.{i - 1}.norm2."
            old["s4seq.encoder." + name + p] = v
        elif ".norm2." in k:
            old["s4seq.encoder." + k[len("backbone.") :].replace("norm2", "norm1")] = v
        elif k != "lm_head.weight":
            old["s4seq.encoder." + k[len("backbone.") :]] = v
    back = normalize_reference_keys(old)
    assert set(back) == set(new) - {"lm_head.weight"}
    assert all(torch.equal(back[k], new[k]) for k in back)

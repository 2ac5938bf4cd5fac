"""Correctness of the neural-network core: every fast path against its slow reference.

Tiny sizes throughout; the whole file runs in seconds on two cores.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from h3lab.nn import fftconv as fftconv_module
from h3lab.nn import h3core as h3core_module
from h3lab.nn.attention import Attention
from h3lab.nn.config import LMConfig, preset_mixers
from h3lab.nn.fftconv import direct_conv_ref, fftconv, next_fast_len
from h3lab.nn.h3 import H3
from h3lab.nn.h3core import h3_mix, h3_mix_heads
from h3lab.nn.lm import LanguageModel, build_mixer
from h3lab.nn.s4d import S4D
from h3lab.nn.ssm import DiagonalSSM, ShiftSSM, vandermonde_kernel, vandermonde_kernel_ref

VOCAB = 13


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b| — the "relative" error the step/forward contracts promise."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def cfg_for(mixer: str, **kw: object) -> LMConfig:
    if mixer == "h3ch":  # h3lab's earlier H3 variant: one SSM per kv channel
        mixer, kw = "h3", {"h3_ssm": "channel", **kw}
    base: dict[str, object] = dict(
        vocab_size=VOCAB, d_model=16, mixers=(mixer,), d_state=8, n_head=2, mlp_ratio=2
    )
    base.update(kw)
    return LMConfig(**base)  # type: ignore[arg-type]


def layer(
    mixer: str, *, head_dim: int = 1, dtype: torch.dtype = torch.float32, **kw: object
) -> Any:
    # Any, not Mixer: the kind is chosen per test case, and each mixer's step() takes its own
    # state type (allocated by the same mixer), which a union cannot pair up.
    torch.manual_seed(0)
    cfg = cfg_for(mixer, head_dim=head_dim, **kw)
    m = build_mixer(cfg.mixers[0], cfg).to(dtype)
    m.reset_parameters(gen(1))
    # Spread dt over a wider range than the init so slow and fast modes both show up.
    for mod in m.modules():
        if isinstance(mod, DiagonalSSM):
            with torch.no_grad():
                mod.log_dt.copy_(torch.linspace(math.log(0.01), math.log(0.5), mod.channels))
    return m


MIXER_CASES = [
    ("h3", 1),
    ("h3", 2),
    ("h3", 4),
    ("h3ch", 2),
    ("h3ch", 4),
    ("shift", 1),
    ("shift", 2),
    ("s4d", 1),
    ("gss", 1),
    ("attn", 1),
]
CASE_IDS = [f"{m}-hd{h}" for m, h in MIXER_CASES]


# ------------------------------------------------------------------------------ kernels


@pytest.mark.parametrize("L,Lk", [(1, 1), (7, 7), (16, 16), (33, 5), (50, 50), (12, 40)])
def test_fftconv_equals_direct_causal_convolution(L: int, Lk: int) -> None:
    g = gen()
    u = torch.randn(3, 4, L, generator=g, dtype=torch.float64)
    k = torch.randn(4, Lk, generator=g, dtype=torch.float64)
    D = torch.randn(4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(fftconv(u, k, D), direct_conv_ref(u, k, D), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fftconv(u, k), direct_conv_ref(u, k), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "block_bytes",
    [
        1,  # one row per block: the loop visits every (batch, channel) pair
        2 * 5 * 18 * 8,  # two whole sequences per block, the last block a single one
    ],
    ids=["channel-blocks", "batch-blocks"],
)
def test_fftconv_in_row_blocks_equals_direct_convolution_with_gradients(
    monkeypatch: pytest.MonkeyPatch, block_bytes: int
) -> None:
    # u is (3, 5, 12) float64 with a 7-tap kernel: padded rows of n = 18 points.
    monkeypatch.setattr(fftconv_module, "BLOCK_BYTES", block_bytes)
    g = gen()
    u = torch.randn(3, 5, 12, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    blocks = fftconv_module._row_blocks(u, 18)
    assert len(blocks) == (15 if block_bytes == 1 else 2)
    D = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(fftconv(u, k, D), direct_conv_ref(u, k, D))
    assert torch.autograd.gradcheck(fftconv, (u, k, D))
    assert torch.autograd.gradcheck(lambda u, k: fftconv(u, k, None), (u, k))


def test_fftconv_runs_half_precision_inputs_in_float32() -> None:
    g = gen()
    u = torch.randn(2, 3, 40, generator=g)
    k = torch.randn(3, 40, generator=g) * 0.1
    D = torch.randn(3, generator=g)
    got = fftconv(u.bfloat16(), k.bfloat16(), D.bfloat16())
    assert got.dtype == torch.bfloat16
    want = direct_conv_ref(u.bfloat16().float(), k.bfloat16().float(), D.bfloat16().float())
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)


def test_direct_reference_is_the_textbook_causal_sum() -> None:
    g = gen()
    u = torch.randn(1, 2, 6, generator=g, dtype=torch.float64)
    k = torch.randn(2, 6, generator=g, dtype=torch.float64)
    want = torch.zeros_like(u)
    for t in range(6):
        for s in range(t + 1):
            want[..., t] += k[:, t - s] * u[..., s]
    torch.testing.assert_close(direct_conv_ref(u, k), want)


def test_next_fast_len_is_the_smallest_2_rich_5_smooth_length_at_least_n() -> None:
    def fast(m: int) -> bool:
        exps = []
        for p in (2, 3, 5):
            e = 0
            while m % p == 0:
                m, e = m // p, e + 1
            exps.append(e)
        return m == 1 and exps[0] >= exps[1] + exps[2]

    for n in [*range(1, 600), 1087, 4159, 16447, 32767]:
        got = next_fast_len(n)
        assert got >= n and fast(got)
        assert not any(fast(m) for m in range(n, got))
    # The lengths the H3 layer asks for at 1k, 4k and 16k tokens (shift kernel of 64 taps).
    assert [next_fast_len(L + 63) for L in (1024, 4096, 16384)] == [1152, 4320, 17280]


def assert_fused_equals_composed(layer: H3, L: int) -> None:
    """Output, input gradient and every parameter's gradient of the fused path against the
    composed one, in float64, for a random input of L tokens."""
    x = torch.randn(3, L, 16, generator=gen(2), dtype=torch.float64)
    grad_out = torch.randn(3, L, 16, generator=gen(3), dtype=torch.float64)
    results = []
    for fuse in (True, False):
        layer.fuse = fuse
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(grad_out)
        grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
        assert xi.grad is not None
        results.append((y.detach(), xi.grad, grads))
    (y_f, gx_f, gp_f), (y_c, gx_c, gp_c) = results
    assert rel_err(y_f, y_c) < 1e-12 and rel_err(gx_f, gx_c) < 1e-12
    assert set(gp_f) == set(gp_c) and len(gp_f) == len(list(layer.parameters()))
    for name in gp_c:
        assert rel_err(gp_f[name], gp_c[name]) < 1e-10, name


@pytest.mark.parametrize("head_dim", [1, 4])
@pytest.mark.parametrize("block_bytes", [1, 3000, 1 << 20], ids=["rows", "channels", "batch"])
@pytest.mark.parametrize("L", [1, 37, 300])
@pytest.mark.parametrize("save_bytes", [0, 1 << 30], ids=["recompute", "keep"])
def test_fused_h3_equals_the_composed_layer_with_gradients(
    monkeypatch: pytest.MonkeyPatch, block_bytes: int, L: int, head_dim: int, save_bytes: int
) -> None:
    monkeypatch.setattr(fftconv_module, "BLOCK_BYTES", block_bytes)
    monkeypatch.setattr(h3core_module, "MIN_ROWS", 1)  # blocks as small as BLOCK_BYTES says
    monkeypatch.setattr(h3core_module, "SAVE_BYTES", save_bytes)  # head_dim 1 only
    layer = H3(cfg_for("h3", head_dim=head_dim)).double()
    assert layer._can_fuse(torch.zeros(1, 48, 4)) is True
    layer.reset_parameters(gen(1))
    assert_fused_equals_composed(layer, L)


@pytest.mark.parametrize("save_bytes", [0, 1 << 30], ids=["recompute", "keep"])
def test_fused_h3_blocks_of_at_least_min_rows_equal_the_composed_layer(
    monkeypatch: pytest.MonkeyPatch, save_bytes: int
) -> None:
    """Blocks sized by MIN_ROWS rather than BLOCK_BYTES (5 rows of 16 channels: three full
    channel blocks and a short one per sequence, walked channel block by channel block)."""
    monkeypatch.setattr(fftconv_module, "BLOCK_BYTES", 1)
    monkeypatch.setattr(h3core_module, "MIN_ROWS", 5)
    monkeypatch.setattr(h3core_module, "SAVE_BYTES", save_bytes)
    u = torch.zeros(3, 16, 40)
    blocks = fftconv_module._row_blocks(u, 64, h3core_module.MIN_ROWS)
    assert [hs.stop - hs.start for bs, hs in blocks if bs.start == 0] == [5, 5, 5, 1]
    layer = H3(cfg_for("h3", head_dim=1)).double()
    layer.reset_parameters(gen(1))
    assert_fused_equals_composed(layer, 40)


@pytest.mark.parametrize("save_bytes", [0, 1 << 30], ids=["recompute", "keep"])
def test_fused_h3_function_gradients_match_finite_differences(
    monkeypatch: pytest.MonkeyPatch, save_bytes: int
) -> None:
    monkeypatch.setattr(fftconv_module, "BLOCK_BYTES", 200)  # several blocks
    monkeypatch.setattr(h3core_module, "MIN_ROWS", 1)
    monkeypatch.setattr(h3core_module, "SAVE_BYTES", save_bytes)
    g = gen(4)
    qkv = torch.randn(1, 3 * 3, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ks = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    kd = torch.randn(3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    d1 = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    d2 = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(h3_mix, (qkv, ks, d1, kd, d2))
    # Multi-head, one SSM per head: 6 channels as 3 heads of 2.
    qkv = torch.randn(1, 3 * 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    ks = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    d1 = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)

    def heads(
        q: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, e: torch.Tensor
    ) -> torch.Tensor:
        return h3_mix_heads(q, a, b, c, e, 2)

    assert torch.autograd.gradcheck(heads, (qkv, ks, d1, kd, d2))


def test_fused_h3_keeps_intermediates_only_for_a_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below SAVE_BYTES the forward keeps five more tensors for the backward; without a
    backward to come (no_grad, evaluation) it allocates none of them."""
    monkeypatch.setattr(h3core_module, "SAVE_BYTES", 1 << 30)
    g = gen(4)
    qkv = torch.randn(2, 3 * 4, 10, generator=g, requires_grad=True)
    kernels = (torch.randn(4, 3, generator=g), torch.randn(4, generator=g))
    args = (qkv, *kernels, torch.randn(4, 10, generator=g), torch.randn(4, generator=g))

    saved: list[torch.Size] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h3_mix(*args)
    assert len(saved) == 10  # qkv, two spectra, two skips + ks, kv, s and two spectra
    monkeypatch.setattr(h3core_module, "SAVE_BYTES", 0)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h3_mix(*args)
    assert len(saved) == 5

    monkeypatch.setattr(h3core_module, "SAVE_BYTES", 1 << 30)
    spectra: list[tuple[int, ...]] = []
    empty = torch.empty

    def spy(*size: Any, **kw: Any) -> torch.Tensor:
        if kw.get("dtype") is not None and kw["dtype"].is_complex:
            spectra.append(tuple(size))
        return empty(*size, **kw)

    monkeypatch.setattr(torch, "empty", spy)
    h3_mix(*args)
    assert len(spectra) == 2, "with a backward to come the spectra are kept"
    spectra.clear()
    with torch.no_grad():
        y = h3_mix(*args)
    assert spectra == [], "nothing is kept for a backward that will not run"
    torch.testing.assert_close(y, h3_mix(*args).detach())


def test_an_active_inner_hook_takes_the_composed_path_and_sees_the_intermediate() -> None:
    assert H3(cfg_for("h3ch", head_dim=2))._can_fuse(torch.zeros(1, 48, 4)) is False
    layer = H3(cfg_for("h3"))
    seen: list[torch.Tensor] = []
    layer.hook_kv.register_forward_hook(lambda m, i, o: seen.append(o))
    qkv = torch.zeros(1, 48, 4)
    assert layer._can_fuse(qkv) is False
    layer(torch.randn(2, 5, 16, generator=gen(5)))
    assert len(seen) == 1 and seen[0].shape == (2, 5, 16)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("L", [1, 5, 16, 37, 100])
def test_fast_vandermonde_kernel_equals_the_slow_loop_reference(
    discretization: str, L: int
) -> None:
    ssm = DiagonalSSM(6, 8, discretization=discretization, dt_min=0.01, dt_max=0.5)  # type: ignore[arg-type]
    ssm.reset_parameters(gen(2))
    ssm = ssm.double()
    fast, slow = ssm.kernel(L), ssm.kernel_ref(L)
    assert fast.shape == (6, L)
    torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_vandermonde_kernel_is_twice_the_real_part_of_the_closed_form() -> None:
    g = gen()
    W = torch.randn(3, 4, dtype=torch.complex128, generator=g)
    log_A = torch.complex(
        -torch.rand(3, 4, dtype=torch.float64, generator=g),
        torch.randn(3, 4, dtype=torch.float64, generator=g),
    )
    ls = torch.arange(20, dtype=torch.float64)
    want = 2 * (W[..., None] * torch.exp(log_A[..., None] * ls)).sum(1).real
    torch.testing.assert_close(vandermonde_kernel(W, log_A, 20), want)
    torch.testing.assert_close(vandermonde_kernel_ref(W, log_A.exp(), 20), want)


# ------------------------------------------------------------------- step vs parallel


@pytest.mark.parametrize("mixer,head_dim", MIXER_CASES, ids=CASE_IDS)
def test_step_over_a_sequence_equals_the_parallel_forward(mixer: str, head_dim: int) -> None:
    m = layer(mixer, head_dim=head_dim)
    x = torch.randn(2, 19, 16, generator=gen(3))
    with torch.no_grad():
        want = m(x)
        state = m.allocate_state(2, 19)
        got = torch.stack([m.step(x[:, t], state) for t in range(19)], dim=1)
    assert rel_err(got, want) <= 1e-5


@pytest.mark.parametrize("mixer,head_dim", MIXER_CASES, ids=CASE_IDS)
def test_prefill_leaves_the_state_that_stepping_would(mixer: str, head_dim: int) -> None:
    m = layer(mixer, head_dim=head_dim)
    x = torch.randn(2, 23, 16, generator=gen(4))
    with torch.no_grad():
        want = m(x)
        state = m.allocate_state(2, 23)
        m(x[:, :15], state)
        got = torch.stack([m.step(x[:, t], state) for t in range(15, 23)], dim=1)
    assert rel_err(got, want[:, 15:]) <= 1e-5


@pytest.mark.parametrize("prefill", [0, 9])
def test_the_fused_h3_step_equals_the_reference_step(prefill: int) -> None:
    """The fused step (head_dim 1, diagonal kv SSM) against the SSMs' own composed steps, in
    float64 where the two orders of summation agree to rounding, after a prefill or none."""
    m = layer("h3", head_dim=1, dtype=torch.float64)
    x = torch.randn(3, 24, 16, generator=gen(7), dtype=torch.float64)
    with torch.no_grad():
        fused, ref = m.allocate_state(3, 24), m.allocate_state(3, 24)
        assert fused.fused is not None, "head_dim 1 takes the fused path"
        ref.fused = None  # the same state, stepped by the reference
        if prefill:
            m(x[:, :prefill], fused)
            m(x[:, :prefill], ref)
        got = torch.stack([m.step(x[:, t], fused) for t in range(prefill, 24)], dim=1)
        want = torch.stack([m.step(x[:, t], ref) for t in range(prefill, 24)], dim=1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused.shift, ref.shift, rtol=0, atol=0)
    torch.testing.assert_close(fused.kv, ref.kv, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("where", ["in_proj", "out_proj_pre", "global"])
def test_a_hook_on_a_projection_sees_every_fused_step(where: str) -> None:
    """The fused step calls the projections' ``F.linear`` directly; a hook on either (or a
    global one) must still fire and edit what it edits, token by token, as with the modules."""
    m = layer("h3", head_dim=1, dtype=torch.float64)
    x = torch.randn(2, 6, 16, generator=gen(8), dtype=torch.float64)
    calls: list[int] = []

    def edit(_m: nn.Module, _a: object, out: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return out * 2

    def edit_in(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        calls.append(1)
        return (args[0] * 2,)

    with torch.no_grad():
        plain_state, hooked_state, ref_state = (m.allocate_state(2, 6) for _ in range(3))
        ref_state.fused = None
        plain = torch.stack([m.step(x[:, t], plain_state) for t in range(6)], 1)
        if where == "in_proj":
            handle = m.in_proj.register_forward_hook(edit)
        elif where == "out_proj_pre":
            handle = m.out_proj.register_forward_pre_hook(edit_in)
        else:

            def edit_global(mod: nn.Module, a: object, out: torch.Tensor) -> Any:
                return edit(mod, a, out) if mod is m.in_proj else None

            handle = nn.modules.module.register_module_forward_hook(edit_global)
        try:
            got = torch.stack([m.step(x[:, t], hooked_state) for t in range(6)], 1)
            n_fused = len(calls)
            want = torch.stack([m.step_reference(x[:, t], ref_state) for t in range(6)], 1)
        finally:
            handle.remove()
        after = m.step(x[:, 0], m.allocate_state(2, 6))
    assert n_fused == 6, "the hook fired once per token"
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(got, plain), "the hook's edit reached the output"
    torch.testing.assert_close(after, plain[:, 0], rtol=0, atol=0)  # removed: fused again


def test_the_fused_step_sees_weights_updated_in_place() -> None:
    """An optimiser updates parameters in place; a state allocated before must step with the
    new weights, like the reference, which reads the modules."""
    m = layer("h3", head_dim=1, dtype=torch.float64)
    x = torch.randn(2, 16, generator=gen(9), dtype=torch.float64)
    with torch.no_grad():
        fused, ref = m.allocate_state(2, 4), m.allocate_state(2, 4)
        ref.fused = None
        m.in_proj.weight.mul_(1.5)
        m.out_proj.bias.add_(0.25)
        torch.testing.assert_close(m.step(x, fused), m.step(x, ref), rtol=1e-12, atol=1e-12)


def test_only_head_dim_1_with_a_diagonal_kv_ssm_takes_the_fused_step() -> None:
    assert layer("h3", head_dim=2).allocate_state(1).fused is None
    assert layer("shift", head_dim=1).allocate_state(1).fused is None


def test_language_model_step_equals_forward_for_a_hybrid_model() -> None:
    cfg = LMConfig(
        vocab_size=VOCAB,
        d_model=16,
        mixers=("h3", "attn", "s4d", "shift", "h3"),
        d_state=8,
        head_dim=2,
        n_head=2,
    )
    m = LanguageModel(cfg, gen(5)).eval()
    ids = torch.randint(0, VOCAB, (2, 17), generator=gen(6))
    with torch.no_grad():
        want = m(ids)
        state = m.allocate_inference_state(2, 17)
        got = torch.stack([m.step(ids[:, t], state) for t in range(17)], dim=1)
    assert got.shape == (2, 17, VOCAB)
    assert rel_err(got, want) <= 1e-5
    assert state.pos == 17


@pytest.mark.parametrize("mixer,head_dim", MIXER_CASES, ids=CASE_IDS)
def test_changing_later_tokens_leaves_earlier_outputs_unchanged(mixer: str, head_dim: int) -> None:
    m = LanguageModel(cfg_for(mixer, head_dim=head_dim), gen(7)).eval()
    ids = torch.randint(0, VOCAB, (2, 20), generator=gen(8))
    t = 11
    changed = ids.clone()
    changed[:, t + 1 :] = torch.randint(0, VOCAB, (2, 20 - t - 1), generator=gen(9))
    with torch.no_grad():
        a, b = m(ids), m(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-5)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-4  # and later ones do change


# ------------------------------------------------------------------------- gradients


def test_fftconv_gradients_match_finite_differences() -> None:
    g = gen()
    u = torch.randn(2, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    D = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fftconv, (u, k, D))


class _KernelOf(torch.nn.Module):
    """Exposes ``DiagonalSSM.kernel(L)`` as a forward, so ``functional_call`` can feed it
    parameters as gradcheck inputs."""

    def __init__(self, ssm: DiagonalSSM, L: int) -> None:
        super().__init__()
        self.ssm, self.L = ssm, L

    def forward(self) -> torch.Tensor:
        return self.ssm.kernel(self.L)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_diagonal_kernel_gradients_match_finite_differences(discretization: str) -> None:
    ssm = DiagonalSSM(3, 4, discretization=discretization).double()  # type: ignore[arg-type]
    ssm.reset_parameters(gen(10))
    wrapper = _KernelOf(ssm, 11)
    names = ("log_dt", "log_A_real", "A_imag", "B", "C")

    def kernel(*ps: torch.Tensor) -> torch.Tensor:
        params = {f"ssm.{n}": p for n, p in zip(names, ps, strict=True)}
        out: torch.Tensor = torch.func.functional_call(wrapper, params, (), strict=False)
        return out

    inputs = tuple(getattr(ssm, n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(kernel, inputs)


@pytest.mark.parametrize("mixer,head_dim", [("h3", 1), ("h3", 2), ("shift", 1), ("s4d", 1)])
def test_layer_input_gradients_match_finite_differences(mixer: str, head_dim: int) -> None:
    m = layer(mixer, head_dim=head_dim, dtype=torch.float64, d_model=4, d_state=4)
    x = torch.randn(1, 6, 4, generator=gen(11), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


# ---------------------------------------------------------------------- generation


def test_greedy_generate_equals_argmax_of_repeated_full_forward() -> None:
    cfg = LMConfig(vocab_size=VOCAB, d_model=16, mixers=("h3", "attn"), d_state=8, n_head=2)
    m = LanguageModel(cfg, gen(12))
    prompt = torch.randint(0, VOCAB, (2, 5), generator=gen(13))
    out = m.generate(prompt, 9)
    assert out.shape == (2, 14)
    assert torch.equal(out[:, :5], prompt)
    seq = prompt
    with torch.no_grad():
        for _ in range(9):
            seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    assert m.training  # generate restores the mode it found


def test_sampling_is_reproducible_given_a_generator() -> None:
    m = LanguageModel(cfg_for("h3"), gen(14))
    prompt = torch.randint(0, VOCAB, (3, 4), generator=gen(15))
    a = m.generate(prompt, 6, temperature=1.0, top_k=5, generator=gen(16))
    b = m.generate(prompt, 6, temperature=1.0, top_k=5, generator=gen(16))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- hooks


def hybrid_cfg() -> LMConfig:
    return LMConfig.from_preset(
        "hybrid", n_layer=3, vocab_size=VOCAB, d_model=16, d_state=8, head_dim=2, n_head=2
    )


def test_hook_names_are_stable() -> None:
    names = LanguageModel(hybrid_cfg(), gen(0)).hook_names()
    assert names == LanguageModel(hybrid_cfg(), gen(1)).hook_names()
    h3 = [
        f"blocks.0.mixer.hook_{n}"
        for n in ("q", "k", "v", "shift_kernel", "shift", "kv", "kernel", "diag", "y", "out")
    ]
    attn = [f"blocks.1.mixer.hook_{n}" for n in ("q", "k", "v", "pattern", "z", "out")]
    resid = [f"blocks.{i}.hook_resid_{w}" for i in range(3) for w in ("pre", "mid", "post")]
    assert names[0] == "hook_embed"
    assert set(h3 + attn + resid) <= set(names)
    assert len(names) == len(set(names))


def test_run_with_cache_returns_the_documented_shapes() -> None:
    m = LanguageModel(hybrid_cfg(), gen(0))
    ids = torch.randint(0, VOCAB, (2, 10), generator=gen(1))
    logits, cache = m.run_with_cache(ids)
    assert set(cache) == set(m.hook_names())
    torch.testing.assert_close(logits, m(ids))
    B, L, D, C, N = 2, 10, 16, 32, 8
    expected = {
        "hook_embed": (B, L, D),
        "blocks.0.mixer.hook_q": (B, L, D),
        "blocks.0.mixer.hook_shift_kernel": (D, N),
        "blocks.0.mixer.hook_shift": (B, L, D),
        "blocks.0.mixer.hook_kv": (B, L, C),
        "blocks.0.mixer.hook_kernel": (C, L),
        "blocks.0.mixer.hook_diag": (B, L, C),
        "blocks.0.mixer.hook_y": (B, L, D),
        "blocks.0.mixer.hook_out": (B, L, D),
        "blocks.1.mixer.hook_q": (B, 2, L, 8),
        "blocks.1.mixer.hook_pattern": (B, 2, L, L),
        "blocks.1.mixer.hook_z": (B, L, D),
        "blocks.2.hook_resid_post": (B, L, D),
    }
    for name, shape in expected.items():
        assert tuple(cache[name].shape) == shape, name
        assert not cache[name].requires_grad
    pattern = cache["blocks.1.mixer.hook_pattern"]
    torch.testing.assert_close(pattern.sum(-1), torch.ones(B, 2, L))
    assert pattern.triu(1).abs().max() == 0  # causal


def test_run_with_cache_records_only_the_names_asked_for() -> None:
    m = LanguageModel(hybrid_cfg(), gen(0))
    ids = torch.randint(0, VOCAB, (1, 6), generator=gen(1))
    _, cache = m.run_with_cache(ids, ["blocks.0.mixer.hook_kernel"])
    assert list(cache) == ["blocks.0.mixer.hook_kernel"]
    with pytest.raises(KeyError):
        m.run_with_cache(ids, ["blocks.9.nope"])
    assert not any(mod._forward_hooks for mod in m.modules())  # hooks removed afterwards


def test_explicit_attention_pattern_path_equals_sdpa() -> None:
    m = LanguageModel(cfg_for("attn"), gen(0))
    ids = torch.randint(0, VOCAB, (2, 9), generator=gen(1))
    logits, _ = m.run_with_cache(ids, ["blocks.0.mixer.hook_pattern"])
    torch.testing.assert_close(logits, m(ids), rtol=1e-5, atol=1e-6)


def test_a_hook_can_replace_the_kernel() -> None:
    m = LanguageModel(cfg_for("h3"), gen(0))
    ids = torch.randint(0, VOCAB, (1, 8), generator=gen(1))
    point = dict(m.named_modules())["blocks.0.mixer.hook_kernel"]
    h = point.register_forward_hook(lambda _m, _a, out: torch.zeros_like(out))
    try:
        _, cache = m.run_with_cache(ids, ["blocks.0.mixer.hook_diag", "blocks.0.mixer.hook_kv"])
    finally:
        h.remove()
    mixer = m.block_list[0].mixer
    assert isinstance(mixer, H3)
    D = mixer.kv_ssm.D.detach()
    torch.testing.assert_close(
        cache["blocks.0.mixer.hook_diag"], cache["blocks.0.mixer.hook_kv"] * D
    )


# ------------------------------------------------------------------ config and init


def test_hybrid_preset_puts_attention_at_layer_1_and_after_the_middle() -> None:
    assert preset_mixers("hybrid", 2) == ("h3", "attn")
    assert preset_mixers("hybrid", 4) == ("h3", "attn", "attn", "h3")
    assert preset_mixers("hybrid", 12).count("attn") == 2
    assert [i for i, k in enumerate(preset_mixers("hybrid", 12)) if k == "attn"] == [1, 6]
    assert preset_mixers("hybrid", 1) == ("attn",)


def test_model_builds_the_mixer_each_layer_asks_for() -> None:
    cfg = LMConfig(vocab_size=VOCAB, d_model=16, mixers=("h3", "attn", "s4d", "shift"), d_state=8)
    m = LanguageModel(cfg, gen(0))
    kinds = [type(b.mixer) for b in m.block_list]
    assert kinds == [H3, Attention, S4D, H3]
    shift = m.block_list[3].mixer
    assert isinstance(shift, H3) and isinstance(shift.kv_ssm, ShiftSSM)


def test_init_is_deterministic_given_a_generator_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = LanguageModel(hybrid_cfg(), gen(42))
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)
    b = LanguageModel(hybrid_cfg(), gen(42))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    torch.manual_seed(7)
    c = LanguageModel(hybrid_cfg())
    torch.manual_seed(7)
    d = LanguageModel(hybrid_cfg())
    assert all(torch.equal(p, q) for p, q in zip(c.parameters(), d.parameters(), strict=True))


def test_embeddings_are_tied_when_asked() -> None:
    m = LanguageModel(cfg_for("h3"), gen(0))
    assert m.lm_head.weight is m.embed.weight
    u = LanguageModel(cfg_for("h3", tie_embeddings=False), gen(0))
    assert u.lm_head.weight is not u.embed.weight


def test_optimiser_groups_are_disjoint_and_name_real_parameters() -> None:
    m = LanguageModel(hybrid_cfg(), gen(0))
    params = dict(m.named_parameters())
    ssm, no_decay = m.ssm_parameter_names(), m.no_decay_parameter_names()
    assert ssm <= set(params) and no_decay <= set(params)
    assert not ssm & no_decay
    assert "blocks.0.mixer.kv_ssm.log_dt" in ssm and "blocks.0.mixer.shift_ssm.C" in ssm
    assert "embed.weight" in no_decay and "blocks.0.mixer.in_proj.bias" in no_decay
    assert "blocks.0.mixer.in_proj.weight" not in ssm | no_decay  # matrices decay
    assert all(params[n].ndim >= 2 for n in set(params) - ssm - no_decay)


def test_diagonal_ssm_starts_at_s4d_lin() -> None:
    ssm = DiagonalSSM(5, 8, dt_min=0.001, dt_max=0.1)
    ssm.reset_parameters(gen(0))
    A = torch.complex(-torch.exp(ssm.log_A_real), ssm.A_imag)
    want = torch.complex(torch.full((4,), -0.5), math.pi * torch.arange(4.0))
    torch.testing.assert_close(A, want.expand(5, 4))
    dt = ssm.log_dt.exp()
    assert bool(((dt >= 0.001) & (dt <= 0.1)).all())


# ------------------------------------------------------------ channels-first projections


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("direction", ["to", "from"])
def test_channels_first_linears_equal_the_plain_linear_with_gradients(
    direction: str, bias: bool
) -> None:
    """The hand-written backward of the projections into and out of the (B, C, L) layout
    against autograd through ``F.linear`` and a transpose, in float64; and the gradients
    come back in the layout their consumers read (contiguous, no transposed views)."""
    from h3lab.nn import layout

    g = gen(11)
    B, L, Din, Dout = 3, 7, 5, 6
    shape = (B, L, Din) if direction == "to" else (B, Din, L)
    x = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(Dout, Din, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(Dout, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    fast, ref = (
        (layout.linear_to_channels_first, layout.linear_to_channels_first_ref)
        if direction == "to"
        else (layout.linear_from_channels_first, layout.linear_from_channels_first_ref)
    )
    leaves = [t for t in (x, w, b) if t is not None]
    got = fast(x, w, b)
    want = ref(x, w, b)
    assert got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    gout = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(got, leaves, gout)
    want_grads = torch.autograd.grad(want, leaves, gout)
    for a, e in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert grads[0].is_contiguous(), "the input's gradient arrives in the input's layout"
    if b is None:
        assert torch.autograd.gradcheck(lambda x_, w_: fast(x_, w_, None), (x, w))
    else:
        assert torch.autograd.gradcheck(fast, (x, w, b))


@pytest.mark.parametrize("direction", ["to", "from"])
def test_channels_first_linears_train_under_bf16_autocast(direction: str) -> None:
    """GPU training runs under bf16 autocast: the projections' gradients must come back for
    the float32 parameters as with a plain linear (CPU autocast exercises the same path)."""
    from h3lab.nn import layout

    g = gen(12)
    shape = (2, 6, 4) if direction == "to" else (2, 4, 6)
    x = torch.randn(*shape, generator=g, requires_grad=True)
    w = torch.randn(5, 4, generator=g, requires_grad=True)
    b = torch.randn(5, generator=g, requires_grad=True)
    fast, ref = (
        (layout.linear_to_channels_first, layout.linear_to_channels_first_ref)
        if direction == "to"
        else (layout.linear_from_channels_first, layout.linear_from_channels_first_ref)
    )
    grads = []
    for fn in (fast, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(x, w, b)
        assert out.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(out.float().sum(), (x, w, b)))
    for a, e in zip(*grads, strict=True):
        assert a.dtype == e.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2)

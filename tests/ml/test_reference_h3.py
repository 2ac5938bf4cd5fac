"""The reference-algorithm baseline (:mod:`h3lab.nn.reference_h3`) computes the same layer as
h3lab's H3 on the same weights — outputs and gradients — so that the speed benchmark compares
two implementations of one function."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from h3lab.nn.config import LMConfig
from h3lab.nn.fftconv import direct_conv_ref
from h3lab.nn.h3 import H3
from h3lab.nn.reference_h3 import ReferenceH3, fftconv_ref, reference_from_h3lab
from h3lab.nn.reference_weights import h3_mixer_state_dict, reference_mixer_state_dict
from tests.ml.test_reference import h3_recurrence, reference_h3_params


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def max_rel_err(got: Tensor, want: Tensor) -> float:
    scale = max(1.0, float(want.detach().abs().max()))
    return float((got.detach() - want.detach()).abs().max()) / scale


def h3lab_layer(d_model: int, d_state: int, head_dim: int, seed: int) -> H3:
    cfg = LMConfig(vocab_size=2, d_model=d_model, d_state=d_state, head_dim=head_dim)
    layer = H3(cfg)
    layer.reset_parameters(gen(seed))
    return layer


def test_fftconv_ref_is_the_causal_convolution_with_skip() -> None:
    g = gen(0)
    u, k, D = torch.randn(2, 3, 17, generator=g), torch.randn(3, 17, generator=g), torch.randn(3)
    assert max_rel_err(fftconv_ref(u, k, D), direct_conv_ref(u, k, D)) < 1e-5


@pytest.mark.parametrize("head_dim", [1, 2, 4])
def test_baseline_with_reference_weights_equals_the_step_by_step_recurrence(
    head_dim: int,
) -> None:
    """The baseline follows the reference's algorithm; check it against the recurrence written
    from the paper's equations (independent of both FFT implementations)."""
    p = reference_h3_params(8, 6, head_dim, gen(head_dim))
    ref = ReferenceH3(8, 6, head_dim)
    ref.load_state_dict(p)
    u = torch.randn(3, 13, 8, generator=gen(10))
    assert max_rel_err(ref(u), h3_recurrence(p, u, head_dim)) < 1e-5


@pytest.mark.parametrize("head_dim", [1, 2, 4])
def test_h3lab_with_the_baselines_weights_computes_the_same_forward(head_dim: int) -> None:
    p = reference_h3_params(8, 6, head_dim, gen(20 + head_dim))  # shift B random, not e1
    ref = ReferenceH3(8, 6, head_dim)
    ref.load_state_dict(p)
    layer = H3(LMConfig(vocab_size=2, d_model=8, d_state=6, head_dim=head_dim))
    layer.load_state_dict(h3_mixer_state_dict(p))
    u = torch.randn(2, 300, 8, generator=gen(11))
    assert max_rel_err(layer(u), ref(u)) < 2e-5


@pytest.mark.parametrize(
    ("head_dim", "dtype", "tol"),
    [
        (1, torch.float32, 5e-5),
        (8, torch.float32, 5e-5),
        (1, torch.float64, 1e-10),
        (8, torch.float64, 1e-10),
    ],
)
def test_baseline_from_h3lab_weights_matches_outputs_and_every_gradient(
    head_dim: int, dtype: torch.dtype, tol: float
) -> None:
    layer = h3lab_layer(32, 16, head_dim, seed=head_dim).to(dtype)
    ref = reference_from_h3lab(layer, head_dim)
    x = torch.randn(2, 257, 32, generator=gen(3), dtype=dtype)
    grad_out = torch.randn(2, 257, 32, generator=gen(4), dtype=dtype)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = layer(xa), ref(xb)
    assert max_rel_err(ya, yb) < tol
    ya.backward(grad_out)
    yb.backward(grad_out)
    assert xa.grad is not None and xb.grad is not None
    assert max_rel_err(xa.grad, xb.grad) < tol
    # Every parameter maps one to one (the shift input vector is e1, so the reference's taps
    # are h3lab's): compare each gradient through the same mapping.
    grads_a = {k: p.grad for k, p in layer.named_parameters()}
    grads_b = dict(ref.named_parameters())
    mapped = reference_mixer_state_dict({k: g for k, g in grads_a.items() if g is not None})
    assert set(mapped) == set(grads_b)
    for name, want in mapped.items():
        got = grads_b[name].grad
        assert got is not None, name
        if name == "ssm_k_kernel.kernel.B":
            continue  # not a parameter of h3lab's layer (its value is fixed at e1 here)
        assert max_rel_err(got, want) < tol * 10, name


def test_the_reference_mapping_round_trips() -> None:
    layer = h3lab_layer(16, 8, 4, seed=7)
    sd = layer.state_dict()
    back = h3_mixer_state_dict(reference_mixer_state_dict(sd))
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k

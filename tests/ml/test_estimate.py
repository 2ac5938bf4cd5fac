"""The run-cost estimator: exact parameter counts, and memory and compute that grow as the
documented formulas say."""

from __future__ import annotations

import dataclasses

import pytest

from h3lab.config import RunConfig, TaskConfig, TrainConfig
from h3lab.estimate import estimate, parameters
from h3lab.nn.config import LMConfig
from h3lab.nn.lm import LanguageModel

CONFIGS = {
    "h3": LMConfig(vocab_size=11, d_model=16, mixers=("h3", "h3"), d_state=8),
    "h3-heads": LMConfig(vocab_size=11, d_model=16, mixers=("h3",), d_state=4, head_dim=4),
    "h3-heads-per-channel": LMConfig(
        vocab_size=11, d_model=16, mixers=("h3",), d_state=4, head_dim=4, h3_ssm="channel"
    ),
    "gss": LMConfig(vocab_size=11, d_model=16, mixers=("gss", "gss"), d_state=4),
    "attn-learned-positions": LMConfig(
        vocab_size=13, d_model=16, mixers=("attn",), n_head=1, pos_embed="learned", max_len=22
    ),
    "shift": LMConfig(vocab_size=7, d_model=8, mixers=("shift",), d_state=6, head_dim=2),
    "attn": LMConfig(vocab_size=13, d_model=16, mixers=("attn", "attn"), n_head=2),
    "s4d-untied": LMConfig(
        vocab_size=9, d_model=12, mixers=("s4d",), d_state=4, tie_embeddings=False
    ),
    "hybrid-no-mlp": LMConfig(
        vocab_size=10, d_model=8, mixers=("h3", "attn", "s4d", "shift"), mlp_ratio=0, n_head=2
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_parameter_count_equals_the_built_models(name: str) -> None:
    cfg = CONFIGS[name]
    model = LanguageModel(cfg)
    assert parameters(cfg) == sum(p.numel() for p in model.parameters())


def _run(n_layer: int = 2, d_model: int = 64, seq_len: int = 64, batch: int = 8) -> RunConfig:
    return RunConfig.build(
        preset="hybrid",
        n_layer=n_layer,
        d_model=d_model,
        task=TaskConfig("induction_head", vocab_size=16, seq_len=seq_len),
        train=TrainConfig(steps=100, batch_size=batch),
    )


def test_memory_counts_weights_and_optimiser_state_and_grows_with_tokens() -> None:
    small = estimate(_run())
    assert small.weights_bytes == 16 * small.parameters
    assert small.memory_bytes == small.weights_bytes + small.activation_bytes
    doubled = estimate(_run(batch=16))
    assert doubled.weights_bytes == small.weights_bytes
    assert doubled.activation_bytes > small.activation_bytes


def test_compute_is_at_least_six_flops_per_parameter_and_token() -> None:
    cfg = _run()
    est = estimate(cfg)
    tokens = cfg.train.steps * cfg.train.batch_size * cfg.task.seq_len
    assert est.flops >= 6 * est.parameters * tokens
    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=200))
    assert estimate(longer).flops == 2 * est.flops


def test_the_reported_abuses_are_far_beyond_a_cpu_worker() -> None:
    wide = estimate(_run(n_layer=64, d_model=16384, batch=1))
    assert wide.parameters > 10**11
    long = estimate(_run(seq_len=65536, batch=4096))
    assert long.memory_gib > 1000


def test_the_summary_reads_as_one_line() -> None:
    text = estimate(_run()).summary()
    assert text.startswith("≈ ") and "params" in text and "GiB" in text and "GFLOP" in text

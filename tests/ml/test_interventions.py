"""Interventions on every mixer: exactness (ablating nothing, patching everything with clean
activations, steering by 0 change nothing / restore exactly), ablations that mean what they say,
corruptions that change the answer, and PNG + SVG + JSON reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from h3lab import interventions as iv
from h3lab.config import RunConfig, TaskConfig
from h3lab.data.synthetic import (
    associative_recall,
    associative_recall_safari,
    induction_head,
    induction_head_safari,
)
from h3lab.nn.lm import LanguageModel

PRESETS = ["attention", "h3", "s4d", "hybrid"]


def model_for(preset: str, vocab: int = 12) -> LanguageModel:
    task = TaskConfig(name="associative_recall", vocab_size=vocab, seq_len=12)
    cfg = RunConfig.build(preset=preset, d_model=16, d_state=8, n_head=2, task=task)
    model = LanguageModel(cfg.model, generator=torch.Generator().manual_seed(0))
    return model.eval()


def ar_batch(n: int = 16, vocab: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    inputs, targets = associative_recall(n, vocab, 12, torch.Generator().manual_seed(seed))
    return inputs, targets[:, -1]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_mixer_exposes_components(preset: str) -> None:
    kinds = {c.kind for c in iv.components(model_for(preset), channels=True)}
    assert {"mixer", "mlp"} <= kinds
    if preset in ("attention", "hybrid"):
        assert "head" in kinds
    if preset in ("h3", "hybrid"):
        assert {"shift_ssm", "diag_ssm", "ssm_channel"} <= kinds
    if preset == "s4d":
        assert "diag_ssm" in kinds


@pytest.mark.parametrize("preset", PRESETS)
def test_ablating_nothing_changes_nothing(preset: str) -> None:
    model = model_for(preset)
    inputs, _ = ar_batch()
    plain = iv.forward(model, inputs)
    for mode in iv.ABLATION_MODES:
        g = torch.Generator().manual_seed(0)
        acts = iv.cache_outputs(model, inputs, ["blocks.0.mixer.hook_out"])
        empty = iv.Site("blocks.0.mixer.hook_out", channels=(0, 0))  # an empty selection
        edit = iv.ablation_edit(empty, mode, acts["blocks.0.mixer.hook_out"], g)
        assert torch.equal(iv.forward(model, inputs, [(empty.module, edit)]), plain)
    assert torch.equal(iv.forward(model, inputs, []), plain)


@pytest.mark.parametrize("preset", PRESETS)
def test_patching_every_position_with_clean_activations_restores_the_clean_output(
    preset: str,
) -> None:
    model = model_for(preset)
    clean, answers = ar_batch()
    corrupted, wrong = iv.corrupt_copy_task(clean, answers, torch.Generator().manual_seed(1))
    clean_logits = iv.forward(model, clean)
    for hook in (
        "hook_embed",
        "blocks.0.hook_resid_post",
        f"blocks.{len(model.blocks) - 1}.hook_resid_post",
    ):
        acts = iv.cache_outputs(model, clean, [hook])[hook]
        site = iv.Site(hook)
        patched = iv.forward(model, corrupted, [(hook, iv._replace(site, iv._constant(acts)))])
        assert torch.equal(patched, clean_logits), hook
    result = iv.patch_scan(model, clean, corrupted, answers, wrong, [iv.Site("hook_embed")])
    assert result["rows"][0]["restored"] == pytest.approx(1.0, abs=1e-6)


def test_patching_one_position_restores_only_what_flows_through_it() -> None:
    model = model_for("attention")
    clean, answers = ar_batch()
    corrupted, wrong = iv.corrupt_copy_task(clean, answers, torch.Generator().manual_seed(1))
    sites = iv.patch_sites(model, clean.shape[1])
    result = iv.patch_scan(model, clean, corrupted, answers, wrong, sites)
    by = {(r["hook"], r["position"]): r["restored"] for r in result["rows"]}
    # The query (last position) is unchanged by the corruption: patching it restores nothing.
    assert by[("blocks.0.hook_resid_pre", clean.shape[1] - 1)] == pytest.approx(0.0, abs=1e-6)
    # Everything reaches the answer through the residual stream at the last position after
    # the last layer: patching it there restores the clean logit difference exactly.
    end = iv.Site(f"blocks.{len(model.blocks) - 1}.hook_resid_post", position=clean.shape[1] - 1)
    exact = iv.patch_scan(model, clean, corrupted, answers, wrong, [end])
    assert exact["rows"][0]["restored"] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_steering_with_coefficient_zero_is_the_identity(preset: str) -> None:
    model = model_for(preset)
    inputs, answers = ar_batch()
    hook = "blocks.0.hook_resid_post"
    direction = iv.steering_direction(model, hook, inputs[:8], inputs[8:])
    assert direction.shape == (16,)
    plain = iv.forward(model, inputs)
    assert torch.equal(iv.forward(model, inputs, [(hook, iv.steering_edit(direction, 0.0))]), plain)
    result = iv.steer(model, hook, direction, inputs, int(answers[0]), [0.0, 4.0])
    assert result["rows"][0]["changed"] == 0.0 and result["rows"][0]["kl"] == pytest.approx(
        0.0, abs=1e-6
    )
    assert result["rows"][1]["kl"] > 0


def test_a_large_steering_vector_towards_a_token_makes_the_model_predict_it() -> None:
    model = model_for("h3")
    inputs, _ = ar_batch(32)
    target = 9
    # the unembedding direction of the target token, as a steering vector at the last layer
    direction = model.lm_head.weight[target].detach()
    hook = f"blocks.{len(model.blocks) - 1}.hook_resid_post"
    result = iv.steer(model, hook, direction, inputs, target, [0.0, 50.0])
    assert result["rows"][1]["target_rate"] > result["rows"][0]["target_rate"]
    assert result["rows"][1]["target_rate"] > 0.9


def test_zero_ablating_every_mixer_and_mlp_leaves_only_the_embedding_path() -> None:
    model = model_for("h3")
    inputs, answers = ar_batch()
    parts = [c for c in iv.components(model) if c.kind in ("mixer", "mlp")]
    iv.ablate(model, inputs, answers, parts)
    edits = [
        (c.site.module, iv.ablation_edit(c.site, "zero", None, torch.Generator())) for c in parts
    ]
    logits = iv.forward(model, inputs, edits)
    with torch.no_grad():
        expected = model.lm_head(model.ln_final(model.embed(inputs))).float()
    assert torch.allclose(logits, expected, atol=1e-5)


def test_mean_and_resample_ablation_of_identical_examples_change_nothing() -> None:
    model = model_for("hybrid")
    inputs, answers = ar_batch(1)
    same = inputs.repeat(6, 1)
    parts = iv.components(model)
    base = iv.score(iv.forward(model, same), answers.repeat(6))
    for mode in ("mean", "resample"):
        s = iv.ablate(model, same, answers.repeat(6), parts, mode=mode)
        assert s.accuracy == base.accuracy and s.loss == pytest.approx(base.loss, abs=1e-5)


def test_corruptions_change_the_answer_of_both_copy_tasks() -> None:
    g = torch.Generator().manual_seed(3)
    for make in (associative_recall, induction_head):
        inputs, targets = make(64, 12, 16, torch.Generator().manual_seed(0))
        answers = targets[:, -1]
        corrupted, wrong = iv.corrupt_copy_task(inputs, answers, g)
        changed = wrong != answers
        assert changed.float().mean() > 0.9
        assert torch.equal(corrupted[:, -1], inputs[:, -1])  # the query is kept
        # the corrupted answer is what now follows the query's earlier occurrences
        for b in torch.nonzero(changed).flatten().tolist():
            after = (corrupted[b, :-2] == corrupted[b, -1]).nonzero().flatten() + 1
            assert set(corrupted[b, after].tolist()) == {int(wrong[b])}


def test_the_key_corruption_swaps_two_keys_and_keeps_every_value() -> None:
    g = torch.Generator().manual_seed(3)
    for make, vocab, length in (
        (associative_recall, 12, 16),
        (induction_head, 12, 16),
        (associative_recall_safari, 10, 20),
        (induction_head_safari, 20, 30),
    ):
        inputs, targets = make(128, vocab, length, torch.Generator().manual_seed(0))
        answers = targets[:, -1]
        corrupted, wrong = iv.corrupt_copy_keys(inputs, answers, g)
        changed = wrong != answers
        assert changed.float().mean() > 0.8, make.__name__
        assert torch.equal(corrupted[:, -1], inputs[:, -1])  # the query is kept
        for b in torch.nonzero(changed).flatten().tolist():
            q = int(inputs[b, -1])
            moved = (corrupted[b] != inputs[b]).nonzero().flatten()
            # two tokens swapped identities: q and one other, nowhere else a change
            swapped = set(inputs[b, moved].tolist()) | set(corrupted[b, moved].tolist())
            assert len(swapped) == 2 and q in swapped
            # every value stays: what followed the query's occurrences is still there
            before = (inputs[b, :-2] == q).nonzero().flatten()
            assert torch.equal(corrupted[b, before + 1], inputs[b, before + 1])
            # and the query now points at the corrupted answer, wherever it occurs
            now = (corrupted[b, :-2] == q).nonzero().flatten()
            assert now.numel() > 0 and set(corrupted[b, now + 1].tolist()) == {int(wrong[b])}
        unchanged = torch.nonzero(~changed).flatten()
        assert torch.equal(corrupted[unchanged], inputs[unchanged])


def test_reports_write_png_svg_and_json(tmp_path: Path) -> None:
    model = model_for("hybrid")
    clean, answers = ar_batch()
    corrupted, wrong = iv.corrupt_copy_task(clean, answers, torch.Generator().manual_seed(1))
    scan = iv.ablation_scan(model, clean, answers, modes=("zero",))
    patch = iv.patch_scan(model, clean, corrupted, answers, wrong, iv.patch_sites(model, 12))
    hook = "blocks.0.hook_resid_post"
    steer = iv.steer(
        model, hook, iv.steering_direction(model, hook, clean[:8], clean[8:]), clean, 3, [0, 1]
    )
    prov = {"seed": 0, "inputs_sha256": iv.tensor_hash(clean, corrupted)}
    for kind, fig, data in (
        ("ablation", iv.plot_ablation(scan), scan),
        ("patching", iv.plot_patching(patch), patch),
        ("steering", iv.plot_steering(steer), steer),
    ):
        written = iv.write_report(tmp_path, kind, fig, {**data, **prov})
        for ext in ("png", "svg", "json"):
            assert (tmp_path / f"{kind}.{ext}").stat().st_size > 0
        assert json.loads((tmp_path / f"{kind}.json").read_text()) == written
        assert written["inputs_sha256"] == prov["inputs_sha256"]
